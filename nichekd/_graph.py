"""The neighbourhood graph where scverse tools look for it: ``obsp['spatial_connectivities']`` and
``obsp['spatial_distances']`` (squidpy's names), computed by :func:`squidpy.gr.spatial_neighbors` in microns."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ._utils import keep_torch_threads


def store_spatial_graph(
    adata: ad.AnnData,
    xy_um: np.ndarray,
    radius_um: float,
    libraries: np.ndarray,
    *,
    key_added: str = "spatial",
) -> None:
    """Write the radius graph (neighbours within ``radius_um`` of the same library) into ``adata``.

    ``obsp[f"{key_added}_connectivities"]`` (binary) and ``obsp[f"{key_added}_distances"]`` (microns) are what
    ``squidpy.gr.nhood_enrichment``, ``squidpy.gr.spatial_autocorr`` or CellCharter read;
    ``uns[f"{key_added}_neighbors"]`` records the parameters as squidpy does. The graph is computed on micron
    coordinates, whatever the units of ``obsm['spatial']``.

    Examples
    --------
    >>> store_spatial_graph(adata, xy_um, 50.0, adata.obs["library"].to_numpy())  # doctest: +SKIP
    """
    import squidpy as sq

    labels = pd.Categorical(np.asarray(libraries).astype(str))
    slim = ad.AnnData(obs=pd.DataFrame({"library": labels}, index=adata.obs_names.astype(str)))
    slim.obsm["spatial"] = np.asarray(xy_um, dtype=float)
    library_key = "library" if len(labels.categories) > 1 else None
    with keep_torch_threads():  # squidpy's numba kernels reset the OpenMP thread count torch shares
        if hasattr(sq.gr, "spatial_neighbors_radius"):  # squidpy >= 1.8 (spatial_neighbors is deprecated)
            result = sq.gr.spatial_neighbors_radius(
                slim, radius=float(radius_um), library_key=library_key, copy=True
            )
        else:
            result = sq.gr.spatial_neighbors(
                slim, coord_type="generic", radius=float(radius_um), library_key=library_key, copy=True
            )
    conn, dist = (result.connectivities, result.distances) if hasattr(result, "connectivities") else result
    adata.obsp[f"{key_added}_connectivities"] = conn.tocsr()
    adata.obsp[f"{key_added}_distances"] = dist.tocsr()
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": f"{key_added}_connectivities",
        "distances_key": f"{key_added}_distances",
        "params": {
            "coord_type": "generic",
            "radius": float(radius_um),
            "units": "micrometer",
            "transform": "none",
        },
    }
