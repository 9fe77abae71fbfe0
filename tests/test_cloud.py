"""Cloud CNN on thumbnails of frame-simulator nights it was not trained on (seeds outside training)."""
import numpy as np
import pytest

from ast3stream.classify.cloud import predict_cloudy
from ast3stream.classify.cloud_frames import night_thumbnails


@pytest.mark.parametrize("seed, scale, n_exposures", [(7, 0.1, 8), (9101, 0.08, 6)])
def test_cloud_cnn_on_simulated_frames(seed, scale, n_exposures):
    d = night_thumbnails(seed, scale, n_exposures=n_exposures, n_fields=2)
    assert d["thumbs"].shape[1:] == (256, 256) and d["label"].any() and not d["label"].all()
    probs = np.array([predict_cloudy(t) for t in d["thumbs"]])
    clear, thick = d["depth"] == 0, d["depth"] >= 0.5
    assert thick.any() and np.all(probs[clear] < 0.5) and np.all(probs[thick] > 0.5)


def test_thin_clouds_are_kept_or_dropped_by_depth():
    d = night_thumbnails(9102, 0.05, n_exposures=4, n_fields=2, cloud_max_mag=0.3)
    assert np.all((d["depth"] == 0) | (d["depth"] >= 0.15))
    assert np.all(d["label"] == (d["depth"] >= 0.15))
