"""Functions Dataset in, DataArray out (spectra, stages, curvature, continuous against discrete), the ``ds.dln``
accessor and the plots."""
