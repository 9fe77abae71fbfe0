"""Configuration: the one typed place for every setting of the pipeline.

Settings come, in increasing priority, from the defaults below, an optional TOML file
(``AST3_CONFIG=path.toml`` or ``--config``), environment variables such as
``AST3_KAFKA__BOOTSTRAP=host:9092`` or ``AST3_DATABASE__URL=postgresql+psycopg://...``
(sections are separated by a double underscore), and the command line (``--data-dir``,
``--bootstrap``): command line > environment > file > defaults. A key that is not a
setting (in the file or an ``AST3_`` variable) is an error naming the closest valid one,
and out-of-range values (a partition count below 1, a zero poll interval) are refused.

Conventions used across the package (stated here once):

* Arrays are numpy ``[row, col] = [y, x]``; pixel coordinates ``x, y`` in tables are
  **0-based** with the centre of the first pixel at (0, 0), as in sep and photutils.
  WCS calls use ``origin=0`` accordingly. FITS header sections (``TRIMSEC`` ...) are
  1-based and inclusive, as the FITS standard says.
* Reduced images are in electrons (gain applied; ``GAIN = 1`` in their header).
* Magnitudes are AB-like g-band magnitudes; times are UTC, MJD for science and Unix
  seconds for the stream's timings.
"""
from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

Lane = Literal["qip", "dip"]


class DetectorConfig(BaseModel):
    """The camera. Defaults are AST3-3's CMOS (Yaoan); change them for another survey camera."""

    name: str = "AST3-3"
    nx_raw: int = 14304                 #: raw frame width incl. overscan [px]
    ny_raw: int = 10748                 #: raw frame height incl. overscan [px]
    trimsec: str = "[1:14206,1:10654]"  #: light-sensitive area, FITS 1-based inclusive
    biassec: str = "[14209:14304,1:10654]"  #: overscan columns used for the bias level
    gain: float = 1.6                   #: e-/ADU
    read_noise: float = 2.5             #: e- rms
    saturation: float = 60000.0         #: ADU in the raw frame
    pixel_scale: float = 0.41           #: arcsec/px
    filter: str = "g"
    exptime: float = 60.0               #: s
    zeropoint: float = 27.2             #: nominal mag giving 1 e- in ``exptime`` seconds (clear sky)
    qip_binning: int = 3                #: QIP images are binned qip_binning x qip_binning
    site_lon: float = 102.3             #: deg E (Yaoan, Yunnan)
    site_lat: float = 25.5              #: deg N
    site_height: float = 2000.0         #: m


class KafkaConfig(BaseModel):
    """The message bus. With no ``bootstrap`` an embedded Kafka-protocol broker (Tansu) is started."""

    bootstrap: str | None = None
    prefix: str = "ast3"                #: per-deployment topic prefix, see ``agents.topics``
    partitions: int = Field(1, ge=1)
    replication: int = Field(1, ge=1)
    embedded_port: int = 0              #: 0 = pick a free port
    session_timeout_s: float = 2.0      #: short: Tansu's group joins take half of it
    heartbeat_s: float = 0.5
    web_port: int = 6066                #: faust's web port (each worker needs its own)
    web_host: str = "127.0.0.1"         #: faust's web server (``/metrics``): 0.0.0.0 for Prometheus on another host
    max_message_bytes: int = 16 * 1024 * 1024  #: also set as each topic's ``max.message.bytes``
    # topic retention (``retention.ms``), set when ``agents.broker.ensure_topics`` creates a topic
    retention_days: float = 7.0         #: stage topics ``{p}.{stage}.{lane}``: products on disk outlive them
    exposures_retention_days: float = 365.0  #: ``{p}.exposures[.too]``: what ``replay`` re-runs (small events)
    alerts_retention_days: float = 30.0  #: alerts, ``gcn`` and ``gw``: subscribers catch up from here
    deadletter_retention_days: float = 365.0


class DatabaseConfig(BaseModel):
    url: str | None = None              #: None = SQLite file ``<data_dir>/ast3stream.db``
    namespace: str = ""                 #: table-name prefix; replays write to their own namespace


class PathsConfig(BaseModel):
    data_dir: Path = Path("runs/default")
    watch_dir: Path | None = None       #: None = ``<data_dir>/incoming``
    calib_dir: Path | None = None       #: master bias/flat/bad-pixel files; None = ``<data_dir>/calib``
    products_dir: Path | None = None    #: None = ``<data_dir>/products``
    refcat: Path | None = None          #: reference star catalogue (FITS/CSV/ECSV); None = ``<data_dir>/refcat.fits``
    galaxies: Path | None = None        #: GLADE+-like galaxy catalogue; None = ``<data_dir>/galaxies.csv``
    mpcorb: Path | None = None          #: MPCORB-format orbits; None = ``<data_dir>/MPCORB.DAT``
    variable_stars: Path | None = None  #: GCVS Parquet; None = ``<data_dir>/gcvs.parquet``
    transients: Path | None = None      #: TNS Parquet; None = ``<data_dir>/tns.parquet``
    fields: Path | None = None          #: survey field grid; None = ``<data_dir>/fields.csv``

    def resolve(self, name: str, default: str) -> Path:
        value = getattr(self, name)
        return Path(value) if value is not None else self.data_dir / default


class ProductsConfig(BaseModel):
    retention_days: float = Field(30.0, ge=0)  #: files other than bundles, alerts and templates go after this
    prune_every_s: float = Field(3600.0, gt=0)  #: how often the watching worker prunes


class WatcherConfig(BaseModel):
    patterns: list[str] = ["*.fits", "*.fit", "*.fits.fz", "*.fz"]
    stable_s: float = Field(1.0, ge=0)  #: size must stay unchanged this long (files not closed or renamed)
    poll_s: float = Field(0.25, gt=0)
    giveup_s: float = Field(120.0, gt=0)  #: a file incomplete and unchanged this long goes to the dead letters


class WorkerConfig(BaseModel):
    """One worker process (``ast3stream worker``): how much it holds in memory at once."""

    in_flight: int = Field(2, ge=1)     #: exposures whose chains run at the same time (per exposures topic)
    templates_gb: float = Field(3.0, gt=0)  #: resident templates' frames (both lanes) up to this many GB, least
                                        #: recently used dropped (a full-size field: 1.0 GB); the newest always stays
    subtractions_at_once: int = Field(1, ge=1)  #: chains in the subtraction stage at the same time (a full-size
                                        #: SFFT holds ~30 GB of GPU memory; one CPU SFFT of a scale-0.1 frame 5-8 GB)


class ReductionConfig(BaseModel):
    version: str = "1"
    backend: Literal["auto", "cupy", "numpy"] = "numpy"  #: overscan, bias, flat, saturation on a GPU (cupy/auto)
    combine_sigma: float = 3.0          #: clipping of the master bias/flat combination
    bpm_flat_low: float = 0.5           #: bad pixel: flat response below this x local response
    bpm_flat_high: float = 1.5          #: ... or above this
    bpm_bias_sigma: float = 10.0        #: bad pixel: master bias this many robust sigma off
    saturation_grow: int = 1            #: saturated masks are dilated by this many pixels
    cosmics: bool = True
    cosmic_sigclip: float = 4.5
    cosmic_objlim: float = 5.0
    cosmic_niter: int = 2
    cosmic_method: Literal["auto", "cells", "lacosmic"] = "auto"  #: L.A.Cosmic on the candidate cells (sharp
                                        #: outliers, cosmic_tile px, hits up to cosmic_pad // 2 px around) by
                                        #: cells: astroscrappy on the host; lacosmic: reduction.cosmics.lacosmic
                                        #: on the frame's array (NumPy or CuPy; on NumPy a full frame takes
                                        #: minutes); auto: lacosmic where the frame is on the GPU, else cells
    cosmic_tile: int = 4                #: candidate cell side [px]
    cosmic_pad: int = 5                 #: margin around each cell [px]
    workers: int = 0                    #: processes cleaning a full-size frame's cosmics (0 = one per core, 1 = in process)
    trails: bool = True
    trail_threshold: float = 1.5        #: sigma of the binned image for the Hough transform
    trail_min_length_px: float = 200.0
    trail_bin: int = 4                  #: at least; grows so the binned image is <= 2048 px long


class SourcesConfig(BaseModel):
    version: str = "2"                  #: 2: rows in order of y (strips), ``id`` follows it
    thresh: float = 3.0                 #: per-pixel sigma above background (sep/SExtractor DETECT_THRESH)
    minarea: int = 5
    mesh: int = 256                     #: sep background mesh [px] (SExtractor BACK_SIZE; sep's time falls with it)
    mask_bits: int = 1 | 2 | 8          #: MaskBits ignored by sep (BAD | SATURATED | TRAIL)
    deblend_cont: float = 0.005
    clean: bool = True                  #: SExtractor CLEAN: merges spurious detections in the wings of
                                        #: bright objects (needed on real frames); half of sep.extract's time
    snr_min: float = 20.0               #: FLUX_AUTO / FLUXERR_AUTO cut of the clean list
    clip_sigma: float = 3.0
    drop_least_stellar: float = 0.2     #: fraction of least star-like sources dropped
    workers: int = 0                    #: processes measuring a full-size frame in strips (0 = one per core, 1 = in process)


class AstrometryConfig(BaseModel):
    version: str = "2"                  #: 2: fit on max_fit_stars spread over the frame
    sip_order: int = 4
    max_offset_arcmin: float = 15.0
    max_rotation_deg: float = 5.0
    scale_tolerance: float = 0.03
    match_radius_arcsec: float = 2.0
    n_brightest: int = 60               #: stars used for pattern matching
    max_fit_stars: int = 500            #: clean stars for the TAN-SIP fit: the brightest of each cell of a grid
    max_rms_arcsec: float = 0.5         #: above this the solution is flagged ``bad_wcs``
    min_stars_linear: int = 10          #: fewer matches: only CRVAL of the header WCS is refitted


class PhotometryConfig(BaseModel):
    version: str = "1"
    aperture_factor: float = 6.0        #: eq. 1: aperture diameter = C x median(A_IMAGE)
    zp_clip_sigma: float = 3.0
    zp_max_iter: int = 10
    mag_min: float = 13.0               #: catalogue stars brighter than this are not used (saturation)
    mag_max: float = 19.5
    zp_floor: float = 0.01              #: mag added in quadrature to each calibrator's error (eq. 2)
    residual_min_stars: int = 20        #: fewer calibrators: no quadratic residual (eq. 3)
    maglim_snr: float = 5.0
    psf_lane: bool = True               #: PSF photometry on the slow background lane
    psf_degree: int = 2                 #: PSF pixels vary as a polynomial of this degree in (x, y)
    psf_radius_fwhm: float = 2.5        #: PSF stamp half-size in FWHM


class QualityConfig(BaseModel):
    version: str = "2"                  #: 2: cloud CNN reads the transparency map and flags; airmass in zp_clear
    pcc_min: float = 0.98
    thumbnail_size: int = 256
    cloud_threshold: float = 0.5
    #: let the cloud CNN's verdict (always recorded as ``cloud_prob``) set the ``cloudy`` flag
    #: (cloud-2.0: 99.9 % on 693 held-out frame-simulator frames, see ``models/cloud.json``)
    cloud_cnn_flags: bool = True
    cloudy_zp_deficit: float = 0.5      #: mag below the clear-sky zero point that means cloud
    cloudy_zp_rms: float = 0.15         #: zero-point scatter [mag] that means patchy cloud
    extinction_k: float = 0.18          #: site extinction [mag/airmass] in the clear-sky zero point
    transparency_grid: int = 32         #: nodes per side of the star-extinction map given to the cloud CNN


class TemplateConfig(BaseModel):
    version: str = "1"
    maglim_min: float = 18.5            #: template must reach at least this 5-sigma depth
    max_wait_s: float = 600.0           #: a field's exposure waits at most this for earlier ones to be judged as template
    pcc_min: float = 0.98
    #: a stacked template co-adds the epochs whose fitted PSF FWHM is at most this times the sharpest's
    #: (at least the two sharpest): against LT frame 6, frames 1-5 (FWHM 3.83-4.83 px) left 6-10 |z| > 5
    #: residuals on template stars, the three within 1.1 none (README "Difference imaging on any pair")
    stack_fwhm_ratio: float = Field(1.1, ge=1.0)


class SubtractionConfig(BaseModel):
    version: str = "1"
    backend: Literal["auto", "cupy", "numpy"] = "auto"
    kernel_half_width: int = 15         #: SFFT kernel half-width [full-resolution px; QIP: ceil(/ qip_binning)] (the largest, with kernel_half_width_ratio)
    kernel_half_width_ratio: float | None = Field(None, gt=0)  #: set: half-width ceil(ratio x larger FWHM), capped (sfft's KerHWRatio; `subtract` uses 2); None: fixed, the shapes a worker warms
    kernel_poly_order: int = 2
    #: SFFT's differential-background polynomial. SFFT fits on images that are zero outside the sub-areas,
    #: where the residual is this polynomial itself, so the fit pins it near 0 whatever its order: 0 gives the
    #: difference of 2 (simulated pairs and the real LT, DECam and legacypipe tests; bench.sfft_settings; README
    #: "CPU SFFT") at less time and memory (full-size DIP on the H200: 7.7 s against 9.3 s warm)
    background_poly_order: int = 0
    tile_nx: int = 3072
    tile_ny: int = 4096
    tile_overlap: int = 128
    single_tile_max_pixels: int = 20_000_000  #: images up to this size (QIP) are subtracted in one pass
    background_box: int = 128           #: sky background mesh [px] (sep on CPU, box medians on GPU)
    lanczos_a: int = 3
    align_grid_step: int = 32           #: WCS pixel map is exact on this grid, bilinear between nodes [px]
    align_mask_weight: float = 0.05     #: mask bits of input pixels with |Lanczos weight| >= this propagate
    align_refine: bool = True           #: correct the WCS mapping with stars matched between the frames
    align_refine_degree: int = 2        #: polynomial degree of that correction (x, y offsets)
    align_search_px: float = 10.0       #: largest offset [px] the WCS mapping may have before the correction
    align_match_px: float = 1.5         #: star pairs closer than this [px] after the bulk shift are fitted
    force_conv: Literal["auto", "ref", "sci"] = "auto"  #: auto = convolve the sharper image
    star_snr_min: float = 10.0          #: sub-area stars: minimum FLUX/FLUXERR in both images
    star_isolation_fwhm: float = 2.0    #: no other source within this many FWHM
    min_stars_varying: int = 30         #: tiles with fewer sub-area stars fit a constant kernel and background
    subarea_fwhm: float = 2.0           #: sub-area radius around each star, in FWHM (larger areas add noise, biasing K low)
    ban_sigma: float = 3.0              #: prior-ban stars whose flux ratio or centroid shift deviates by more
    ban_ratio_floor: float = 0.02       #: systematic floor of the relative flux-ratio error
    ban_shift_floor_px: float = 0.05    #: systematic floor of the centroid-shift error [px]
    threads: int = 0                    #: CPU threads for numba/FFTW; 0 = all
    gain_key: str = "GAIN"              #: header card of the gain (signal/variance); absent: estimated from the pixels
    saturation_key: str = "SATURATE"    #: header card of the saturation level (image units); pixels >= 90 % masked
    sky_keys: list[str] = ["SKYLEVEL", "AVSKY"]  #: header cards of the sky level a sky-subtracted image had (gain estimate)
    template_cache: int = 4             #: prepared templates a worker keeps (keyed by product key + version)
    noise_apertures: int = 2000         #: random apertures of the difference-noise check
    noise_aperture_fwhm: float = Field(1.0, gt=0)  #: radius of those apertures, in FWHM of the unconvolved image (at least 1 px); half an FWHM where that leaves fewer than 100 independent ones (small cutouts)


class DetectionConfig(BaseModel):
    version: str = "3"                  #: 3: own matched filter and footprints (numba/CuPy) instead of sep
    backend: Literal["auto", "cupy", "numpy"] = "auto"  #: where the image arithmetic runs (auto: GPU if present)
    thresh: float = 5.0                 #: PSF-fit SNR a candidate needs on the difference image
    prethresh: float = 3.0              #: matched-filter detection threshold [sigma] before the SNR cut
    minarea: int = 4                    #: ISOAREA >= 4 full-resolution px (QIP: / binning^2, at least 1)
    edge_px: int = 16
    elong_min: float = 0.5
    elong_max: float = 6.0
    fwhm_min: float = 1.0               #: full-resolution px (QIP: / binning)
    fwhm_max_factor: float = 2.0        #: FWHM <= this x image FWHM
    stamp_qip: int = 31
    stamp_dip: int = 91
    mask_radius_px: int = 1             #: reject candidates with any mask bit this close to the centroid
    maglim_snr: float = 5.0             #: SNR defining the difference image's limiting magnitude


class CrossmatchConfig(BaseModel):
    version: str = "1"
    galaxy_radius_arcsec: float = 30.0
    asteroid_radius_arcsec: float = 10.0
    object_radius_arcsec: float = 1.5   #: candidates closer than this are one transient object
    order_wait_s: float = 600.0         #: an exposure waits at most this for the field's earlier ones to associate
    asteroid_search_deg: float = 3.0    #: asteroids are computed within this radius of the field centre
    variable_radius_arcsec: float = 2.0 #: GCVS veto radius (needs pyarrow)
    transient_radius_arcsec: float = 2.0  #: known (TNS) transient radius


class ClassifyConfig(BaseModel):
    version: str = "1"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 256
    real_threshold: float = 0.5


class TrainingConfig(BaseModel):
    """Classifier training (``ast3stream classify train``); see ``ast3stream.classify.train``."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3                    #: AdamW; the seed's 0.01 was less stable (see classify.train)
    gamma: float = 0.9                  #: lr x gamma after every epoch (seed paper)
    weight_decay: float = 1e-2
    width: int = 32                     #: ResNet-18 stage widths w, 2w, 4w, 8w (torchvision: 64)
    seed: int = 0
    n_real: int = 10_000
    n_bogus: int = 10_000
    snr_min: float = 8.0                #: candidate SNR range of the simulated training stamps
    snr_max: float = 300.0


class AlertConfig(BaseModel):
    version: str = "1"
    schema_version: str = "2.0"         #: alert schema written (ast3stream/schemas/alert/CHANGES.md)
    #: real/bogus score an alert needs (every candidate still goes to ``candidates`` and the
    #: database); None = the lane model's calibrated threshold, stored with its version
    min_score: float | None = None
    cutout_size: int = 63
    gcn_min_score: float = 0.8
    publisher: str = "ast3stream"       #: ``publisher`` field of every alert packet
    position_error_arcsec: float = 0.5  #: position uncertainty quoted in GCN notices
    #: message framing of the alert topics: ``confluent`` (schema id + schemaless Avro, as Rubin) or
    #: ``container`` (one Avro container per message, as ZTF); ``topic_framing`` overrides it per
    #: topic name without the prefix, e.g. ``{"alerts.dip" = "container"}`` (see ast3stream.alerts.serialize)
    framing: Literal["confluent", "container"] = "confluent"
    topic_framing: dict[str, Literal["confluent", "container"]] = {}
    #: Confluent/Karapace schema registry; the alert schema is registered on start. None = embedded ids
    registry_url: str | None = None
    #: processing timestamps in each packet (``timing``: file closed, alert built, latency); outside
    #: the packet digest, but a replay's packets then differ from the live ones in these fields
    timestamps: bool = False


class SecurityConfig(BaseModel):
    """Kafka, schema-registry and PostgreSQL security (see ``agents.security``). Passwords and
    secrets come only from the environment (``AST3_SECURITY__KAFKA_PASSWORD``) or from a file
    (``*_file``): a settings file that holds one is refused."""

    kafka_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_password_file: Path | None = None
    oauth_token_url: str | None = None  #: OAUTHBEARER: OAuth 2 client-credentials token endpoint
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_client_secret_file: Path | None = None
    oauth_scope: str | None = None
    ssl_cafile: Path | None = None      #: CA bundle for the brokers' (and the registry's) certificates
    ssl_certfile: Path | None = None    #: client certificate (mutual TLS)
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_password_file: Path | None = None
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None


class GWPlanConfig(BaseModel):
    """The night's observable ToO schedule (``too plan``, :mod:`ast3stream.gw.observe`)."""

    site: str = "yaoan"                 #: a preset of ``ast3stream.gw.observe.SITES`` or ``detector`` (detector.site_*)
    min_alt_deg: float = 30.0           #: altitude limit (airmass 2)
    max_airmass: float = 2.0
    horizon: tuple[tuple[float, float], ...] = ()  #: local horizon (azimuth, altitude) [deg], above min_alt_deg
    sun_alt_deg: float = -18.0          #: astronomical night
    moon_sep_deg: float = 20.0          #: Moon separation at new Moon ...
    moon_sep_full_deg: float = 45.0     #: ... and at full Moon (linear in illuminated fraction)
    exptime_s: float = 60.0
    overhead_s: float = 30.0            #: slew + readout per exposure
    revisits: int = 2                   #: visits per field in the night
    revisit_gap_min: float = 60.0       #: least time between visits of a field
    max_fields: int = 50                #: fields scheduled per event (best first)
    auto: bool = True                   #: the stream writes the coming night's plan on every followed notice


class GCNKafkaConfig(BaseModel):
    """GCN Kafka in (``too bridge``): LVK's ``igwn.gwalert`` and classic VOEvents republished unchanged to
    ``{prefix}.gw``. Credentials come from the environment (``GCN_CLIENT_ID`` / ``GCN_CLIENT_SECRET``)."""

    enabled: bool = False               #: run the bridge in the worker
    bootstrap: str = "kafka.gcn.nasa.gov:9092"
    token_url: str = "https://auth.gcn.nasa.gov/oauth2/token"
    oauth: bool = True                  #: SASL_SSL OAUTHBEARER (GCN); False = plaintext (a test broker)
    group_id: str = "ast3stream-gw"
    offset_reset: Literal["latest", "earliest"] = "latest"  #: where a new consumer group starts (not old notices)
    #: also forward our ``{prefix}.gcn`` notices to this topic on ``bootstrap`` (GCN's Kafka, same credentials); None = off
    publish_topic: str | None = None
    topics: tuple[str, ...] = ("igwn.gwalert", "gcn.classic.voevent.LVC_EARLY_WARNING",
                               "gcn.classic.voevent.LVC_PRELIMINARY", "gcn.classic.voevent.LVC_INITIAL",
                               "gcn.classic.voevent.LVC_UPDATE", "gcn.classic.voevent.LVC_RETRACTION")


class GWConfig(BaseModel):
    min_field_probability: float = 0.001
    max_fields: int = 50
    credible_level: float = 0.9
    field_width_deg: float | None = None   #: None = trimmed detector width x pixel scale
    field_height_deg: float | None = None  #: None = trimmed detector height x pixel scale
    order: int | None = None            #: HEALPix order of the field integration; None = auto
    rank_by: Literal["prob", "galaxy_score"] = "prob"
    skymap_dir: Path | None = None      #: where VOEvent sky-map files are found by name (never downloaded)
    grid_overlap: float = 0.1           #: overlap of neighbouring fields in the default survey grid
    # notice policy (ast3stream.gw.policy): what the stream follows; the rest is logged and ignored
    test_mode: bool = False             #: also follow mock superevents (MS..., MDC streams): tests only
    require_significant: bool = True    #: LVK's ``significant`` flag (FAR below its public threshold)
    max_far_per_year: float | None = None  #: also ignore notices with a higher false-alarm rate [yr^-1]
    groups: tuple[str, ...] = ("CBC", "Burst")  #: LVK search groups followed
    max_terrestrial: float | None = None   #: ignore CBC notices with p(Terrestrial) above this
    early_warning: bool = True          #: follow EARLYWARNING (pre-merger) notices
    expire_hours: float = 72.0          #: an event's ToO list stops this long after its last notice
    coverage_every_s: float = 300.0     #: the worker rewrites each active event's coverage report this often
    kn_rb_min: float = 0.5              #: kilonova ranking (ast3stream.gw.kilonova): real/bogus needed
    kn_distance_sigma: float = 2.0      #: host distance within this many DISTSIGMA of DISTMU
    kn_min_rate: float = 0.3            #: |mag/day| of a kilonova-like rise or fade
    plan: GWPlanConfig = Field(default_factory=GWPlanConfig)
    gcn: GCNKafkaConfig = Field(default_factory=GCNKafkaConfig)


class SimulationConfig(BaseModel):
    """The night simulator (:mod:`ast3stream.simulate`). Field-dependent patterns (PSF, vignetting,
    distortion) are in normalised detector coordinates, so a scaled detector is a miniature camera."""

    night: str = "2025-11-21"           #: local evening date of the night
    field_ra: float | None = None       #: first field centre [deg]; None = on the meridian at midnight
    field_dec: float | None = None      #: None = 2 deg north of the ecliptic there
    revisit_min: float = 15.0           #: time between visits of one field
    overhead_s: float = 30.0            #: readout + slew between exposures
    star_density_g21: float = 20000.0   #: stars per deg^2 brighter than g = 21 (log N = 0.3 g + c)
    star_mag_bright: float = 8.0
    star_mag_faint: float = 23.0        #: faintest star drawn in the images
    refcat_mag_limit: float = 21.0
    refcat_margin_deg: float = 0.3      #: catalogue margin around the fields
    galaxy_density: float = 150.0       #: catalogued galaxies per deg^2
    galaxy_min_per_field: int = 20
    background_galaxy_density: float = 3000.0  #: uncatalogued 0.08 < z < 0.5 galaxies per deg^2
    transients_per_field: int = 3
    asteroids_per_field: int = 3
    fast_movers: int = 1                #: near-Earth asteroids (trailed) per night
    asteroid_g_minus_v: float = 0.3
    cosmics_full_frame: float = 600.0   #: cosmic rays per 60 s full-size frame
    trail_fraction: float = 0.3         #: fraction of frames with a satellite trail (at least one)
    sky_mag: float = 19.3               #: g sky surface brightness [mag/arcsec^2]
    extinction_k: float = 0.18          #: mag per airmass
    seeing_min_px: float = 2.6
    seeing_max_px: float = 3.3
    psf_beta: float = 3.0               #: Moffat beta
    psf_curvature: float = 0.1          #: FWHM grows by this fraction at the corners
    psf_elongation: float = 0.12        #: ellipticity 1 - b/a at the corners (radial)
    distortion_px: float = 3.0          #: radial (cubic) distortion at the corners [px]
    pointing_jitter_arcmin: float = 0.5
    wcs_offset_arcmin: float = 8.0      #: header WCS: CRVAL error up to this
    wcs_rotation_deg: float = 2.0       #: header WCS: rotation error up to this
    wcs_scale_error: float = 0.01       #: header WCS: relative pixel-scale error up to this
    cloud_max_mag: float = 2.0
    bias_level: float = 1000.0          #: ADU
    dark_e_s: float = 0.02              #: e-/s/px
    hot_pixel_fraction: float = 2e-5
    vignetting: float = 0.25            #: fractional loss of light at the corners
    prnu: float = 0.01                  #: pixel-to-pixel response rms
    n_bias: int = 5
    n_flat: int = 5
    flat_adu: tuple[float, float] = (30000.0, 20000.0)  #: first/last twilight flat level
    detector_seed: int = 3              #: the camera's defects do not change from night to night


class PortalConfig(BaseModel):
    """The web portal (``ast3stream portal``; ``run`` and ``demo`` start it too)."""

    enabled: bool = True                #: ``run`` and ``demo`` serve it beside the stack
    host: str = "127.0.0.1"
    port: int = 8600
    token: str | None = None            #: operator actions (retry, template set/rebuild) need it; None = read-only
    page_size: int = 50                 #: rows per page of the candidate table
    refresh_s: float = 5.0              #: how often an open night page asks for new exposures


class Settings(BaseSettings):
    """All settings. ``Settings.load()`` reads the TOML file and the environment."""

    model_config = SettingsConfigDict(env_prefix="AST3_", env_nested_delimiter="__", extra="forbid")

    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    watcher: WatcherConfig = Field(default_factory=WatcherConfig)
    products: ProductsConfig = Field(default_factory=ProductsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    reduction: ReductionConfig = Field(default_factory=ReductionConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    astrometry: AstrometryConfig = Field(default_factory=AstrometryConfig)
    photometry: PhotometryConfig = Field(default_factory=PhotometryConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    subtraction: SubtractionConfig = Field(default_factory=SubtractionConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    crossmatch: CrossmatchConfig = Field(default_factory=CrossmatchConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    gw: GWConfig = Field(default_factory=GWConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    portal: PortalConfig = Field(default_factory=PortalConfig)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides) -> "Settings":
        """Defaults < TOML file (``path`` or ``$AST3_CONFIG``) < environment < ``overrides`` (the
        command line). Raises :class:`ConfigError` (one line) for an unreadable file, an unknown
        key or a bad value."""
        path = path or os.environ.get("AST3_CONFIG")
        data: dict = {}
        if path:
            try:
                with open(path, "rb") as fh:
                    data = json.load(fh) if str(path).endswith(".json") else tomllib.load(fh)
            except (OSError, ValueError) as exc:  # tomllib and json errors are ValueErrors
                raise ConfigError(f"settings file {path}: {exc}") from None
            _check_keys(data, cls, f"settings file {path}: ")
            secrets = [k for k, v in data.get("security", {}).items() if k.endswith(("password", "secret")) and v]
            if secrets:
                raise ConfigError(f"settings file {path}: security.{secrets[0]} must come from the environment "
                                  "or a *_file, not a settings file")
        _check_env(cls)
        try:
            env = cls()  # environment only
            merged = _deep_merge(_deep_merge(data, env.model_dump(exclude_unset=True)), overrides)
            return cls(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"setting {where}: {err['msg']} (got {err.get('input')!r})") from None

    # convenient resolved paths -------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write these settings as JSON (what a worker process is started with)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        secrets = {k for k in SecurityConfig.model_fields if k.endswith(("password", "secret"))}
        path.write_text(self.model_dump_json(indent=1, exclude={"security": secrets}))  # workers get them from the environment
        return path

    @property
    def watch_dir(self) -> Path:
        return self.paths.resolve("watch_dir", "incoming")

    @property
    def calib_dir(self) -> Path:
        return self.paths.resolve("calib_dir", "calib")

    @property
    def products_dir(self) -> Path:
        return self.paths.resolve("products_dir", "products")

    @property
    def refcat_path(self) -> Path:
        return self.paths.resolve("refcat", "refcat.fits")

    @property
    def galaxies_path(self) -> Path:
        return self.paths.resolve("galaxies", "galaxies.csv")

    @property
    def mpcorb_path(self) -> Path:
        return self.paths.resolve("mpcorb", "MPCORB.DAT")

    @property
    def fields_path(self) -> Path:
        return self.paths.resolve("fields", "fields.csv")

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.paths.data_dir / 'ast3stream.db').resolve()}"


class ConfigError(ValueError):
    """A settings file, variable or value that is not right: the message says which and why."""


def _closest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def _check_keys(data: dict, model, where: str, prefix: str = "") -> None:
    """Every key of ``data`` is a field of ``model`` (recursively), else :class:`ConfigError`."""
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}unknown setting {prefix + key!r}{_closest(key, fields)}")
        sub = fields[key].annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(value, sub, where, f"{prefix}{key}.")


def _check_env(model) -> None:
    """Every ``AST3_SECTION__KEY`` variable names a setting (``AST3_CONFIG`` names the file)."""
    fields = model.model_fields
    for name in os.environ:
        if not name.startswith("AST3_"):
            continue
        section, _, key = name[len("AST3_"):].lower().partition("__")
        if not key:  # not of the AST3_SECTION__KEY form: a typo for it, or not a setting (AST3_CONFIG)
            if (sec := section.split("_")[0]) in fields:
                raise ConfigError(f"environment variable {name}: sections and keys are separated by a double "
                                  f"underscore: AST3_{sec.upper()}__{section[len(sec) + 1:].upper()}")
            continue
        if section not in fields:
            raise ConfigError(f"environment variable {name}: unknown section {section!r}{_closest(section, fields)}")
        sub = fields[section].annotation.model_fields
        if key.split("__")[0] not in sub:
            raise ConfigError(f"environment variable {name}: unknown setting {section + '.' + key!r}"
                              f"{_closest(key, sub)}")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
