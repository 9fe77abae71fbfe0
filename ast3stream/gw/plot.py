"""Plot a ranked ToO field list: the fields on the sky (over the sky map) and the
cumulative probability against the number of fields observed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table
from matplotlib.figure import Figure

from ast3stream.gw.skymap import probdensity_at


def plot_plan(table: Table, path: str | Path, skymap: Table | None = None, title: str | None = None,
              n_label: int = 10) -> Path:
    """PNG of the plan: Mollweide sky (east left) with field centres coloured by ``prob`` and
    the first ``n_label`` ranks labelled, over the map's density when given; and ``cum_prob``
    and ``prob`` against rank. The sky panel needs ``ra``/``dec`` columns."""
    table = table[np.argsort(table["rank"])]
    has_sky = "ra" in table.colnames and "dec" in table.colnames
    fig = Figure(figsize=(13, 5) if has_sky else (6, 5))
    if has_sky:
        ax = _sky(fig, (1, 2, 1), skymap)
        x, y = _xy(table["ra"], table["dec"])
        sc = ax.scatter(x, y, c=table["prob"], s=12, cmap="viridis", zorder=3)
        for i in range(min(n_label, len(table))):
            ax.annotate(str(table["rank"][i]), (x[i], y[i]), fontsize=7, color="red", zorder=4)
        fig.colorbar(sc, ax=ax, orientation="horizontal", pad=0.08, fraction=0.05, label="field probability")
    ax2 = fig.add_subplot(1, 2 if has_sky else 1, 2 if has_sky else 1)
    ax2.step(table["rank"], table["cum_prob"], where="post", label="cumulative (union)")
    ax2.bar(table["rank"], table["prob"], color="C1", alpha=0.6, label="field")
    ax2.set_xlabel("rank (fields observed)")
    ax2.set_ylabel("probability")
    ax2.set_ylim(0, max(1e-3, float(np.max(table["cum_prob"])) * 1.05) if len(table) else 1)
    ax2.legend(loc="center right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _sky(fig, position, skymap: Table | None):
    """A Mollweide axis (east left, RA labels in hours) over the map's density."""
    ax = fig.add_subplot(*position, projection="mollweide")
    if skymap is not None:
        lon, lat = np.meshgrid(np.linspace(-180, 180, 361), np.linspace(-90, 90, 181))
        dens = probdensity_at(skymap, (-lon) % 360, lat).reshape(lon.shape)
        ax.pcolormesh(np.radians(lon), np.radians(lat), dens, cmap="Greys", shading="auto")
    ax.set_xticks(np.radians(np.arange(-150, 151, 30)))
    ax.set_xticklabels([f"{h}h" for h in (10, 8, 6, 4, 2, 0, 22, 20, 18, 16, 14)], fontsize=7)
    ax.grid(True, lw=0.3)
    return ax


def _xy(ra, dec):
    return -np.radians(((np.asarray(ra, float) + 180) % 360) - 180), np.radians(np.asarray(dec, float))


def plot_schedule(plan: Table, path: str | Path, skymap: Table | None = None, title: str | None = None) -> Path:
    """PNG of a night's schedule (:func:`ast3stream.gw.observe.schedule` with ``cum_prob``): the
    planned fields on the sky numbered in the order of their first visit, and the cumulative
    probability against UTC time (one step per first visit; revisits marked)."""
    from astropy.time import Time

    fig = Figure(figsize=(13, 5))
    ax = _sky(fig, (1, 2, 1), skymap)
    first = plan[plan["visit"] == 1] if len(plan) else plan
    if len(first):
        x, y = _xy(first["ra"], first["dec"])
        ax.plot(x, y, "-", color="C0", lw=0.6, zorder=3)
        sc = ax.scatter(x, y, c=np.arange(len(first)), s=14, cmap="plasma", zorder=4)
        for i in range(min(15, len(first))):
            ax.annotate(str(i + 1), (x[i], y[i]), fontsize=7, color="red", zorder=5)
        fig.colorbar(sc, ax=ax, orientation="horizontal", pad=0.08, fraction=0.05, label="order of first visit")
    ax2 = fig.add_subplot(1, 2, 2)
    if len(plan):
        hours = (np.asarray(plan["mjd"]) - Time(plan.meta["night_start"]).mjd) * 24
        ax2.step(hours, plan["cum_prob"], where="post", label="cumulative probability (union)")
        revisit = np.asarray(plan["visit"]) > 1
        ax2.plot(hours[revisit], np.asarray(plan["cum_prob"])[revisit], "|", color="C1", label="revisit")
        ax2.set_ylim(0, max(1e-3, float(np.max(plan["cum_prob"])) * 1.05))
        ax2.legend(loc="lower right")
    ax2.set_xlabel(f"hours after {plan.meta.get('night_start', '')[:16]} UTC (night start)")
    ax2.set_ylabel("probability covered")
    fig.suptitle(title or "")
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(report: dict, path: str | Path, skymap: Table | None = None, fields: Table | None = None) -> Path:
    """PNG of a coverage report (:func:`ast3stream.gw.coverage.coverage_report`): observed fields
    on the sky coloured by depth, candidates inside the region; probability covered against
    depth and against time."""
    fig = Figure(figsize=(15, 5))
    ax = _sky(fig, (1, 3, 1), skymap)
    if fields is not None and len(fields):
        x, y = _xy(fields["ra"], fields["dec"])
        sc = ax.scatter(x, y, c=np.nan_to_num(np.asarray(fields["maglim"], float), nan=0), s=14, cmap="viridis", zorder=3)
        fig.colorbar(sc, ax=ax, orientation="horizontal", pad=0.08, fraction=0.05, label="limiting magnitude")
    if report["candidates"]:
        x, y = _xy([c["ra"] for c in report["candidates"]], [c["dec"] for c in report["candidates"]])
        ax.scatter(x, y, marker="*", color="red", s=40, zorder=4, label="candidates")
    ax2 = fig.add_subplot(1, 3, 2)
    if report["by_depth"]:
        ax2.plot([d["maglim"] for d in report["by_depth"]], [d["prob"] for d in report["by_depth"]], "o-")
    ax2.set_xlabel("depth reached: limiting magnitude >= m")
    ax2.set_ylabel("probability covered")
    ax3 = fig.add_subplot(1, 3, 3)
    if report["timeline"]:
        t0 = report["timeline"][0]["mjd"]
        ax3.step([(r["mjd"] - t0) * 24 for r in report["timeline"]], [r["cum_prob"] for r in report["timeline"]],
                 where="post")
    ax3.set_xlabel("hours since the first exposure")
    ax3.set_ylabel("probability covered")
    fig.suptitle(f"{report['event_id']}: {report['prob_covered']:.3f} covered by {report['n_exposures']} exposures")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
