"""Gravitational-wave Target of Opportunity: LVK notices, sky maps, ranked survey fields, the notice
policy, the night's observable plan, coverage and kilonova ranking."""
from ast3stream.gw.fields import field_probabilities, galaxy_weights, make_grid
from ast3stream.gw.notices import BadNotice, GWNotice, read_notice
from ast3stream.gw.plot import plot_plan
from ast3stream.gw.policy import Decision, judge
from ast3stream.gw.skymap import BadSkymap, credible_area, credible_level_at, probdensity_at, read_skymap
from ast3stream.gw.too import default_grid, field_size, too_fields

__all__ = ["BadNotice", "BadSkymap", "Decision", "GWNotice", "credible_area", "credible_level_at", "default_grid",
           "field_probabilities", "field_size", "galaxy_weights", "judge", "make_grid", "plot_plan", "probdensity_at",
           "read_notice", "read_skymap", "too_fields"]
