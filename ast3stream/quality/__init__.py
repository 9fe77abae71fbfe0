"""Quality control: Pearson r (eq. 4), zscale thumbnail, cloud verdict, flags."""
from .assess import assess, cloud_probability, pearson_r
from .thumbnail import thumbnail, write_thumbnail

__all__ = ["assess", "cloud_probability", "pearson_r", "thumbnail", "write_thumbnail"]
