"""Manifold data: pure samplers, a user's own point cloud, and the LightningDataModule."""

from lightning_vae.data.datamodule import ManifoldDataModule
from lightning_vae.data.images import Digits, FadingSquare, ImageFiles, ImageManifold, Sprites
from lightning_vae.data.manifolds import (
    Circle,
    GaussianBlobs,
    Helix,
    LineSegment,
    Manifold,
    Sphere,
    Spiral,
    SwissRoll,
    Torus,
    TwoClusters,
    TwoMoons,
)
from lightning_vae.data.pointcloud import PointCloud

__all__ = [
    "Circle",
    "Digits",
    "FadingSquare",
    "GaussianBlobs",
    "Helix",
    "ImageFiles",
    "ImageManifold",
    "LineSegment",
    "Manifold",
    "ManifoldDataModule",
    "PointCloud",
    "Sphere",
    "Spiral",
    "Sprites",
    "SwissRoll",
    "Torus",
    "TwoClusters",
    "TwoMoons",
]
