"""Quality control: Pearson r (eq. 4), zscale thumbnail, transparency map, cloud verdict, flags."""
from .assess import assess, cloud_probability, pearson_r
from .thumbnail import thumbnail, write_thumbnail
from .transparency import clear_zero_point, transparency_map

__all__ = ["assess", "clear_zero_point", "cloud_probability", "pearson_r", "thumbnail", "transparency_map",
           "write_thumbnail"]
