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
        ax = fig.add_subplot(1, 2, 1, projection="mollweide")
        if skymap is not None:
            lon, lat = np.meshgrid(np.linspace(-180, 180, 361), np.linspace(-90, 90, 181))
            dens = probdensity_at(skymap, (-lon) % 360, lat).reshape(lon.shape)
            ax.pcolormesh(np.radians(lon), np.radians(lat), dens, cmap="Greys", shading="auto")
        x = -np.radians(((np.asarray(table["ra"]) + 180) % 360) - 180)
        y = np.radians(np.asarray(table["dec"]))
        sc = ax.scatter(x, y, c=table["prob"], s=12, cmap="viridis", zorder=3)
        for i in range(min(n_label, len(table))):
            ax.annotate(str(table["rank"][i]), (x[i], y[i]), fontsize=7, color="red", zorder=4)
        ax.set_xticks(np.radians(np.arange(-150, 151, 30)))
        ax.set_xticklabels([f"{h}h" for h in (10, 8, 6, 4, 2, 0, 22, 20, 18, 16, 14)], fontsize=7)
        ax.grid(True, lw=0.3)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
