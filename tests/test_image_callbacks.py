"""The image callback's pure statistics: sharpness and coverage."""

import torch

from lightning_vae.image_callbacks import coverage, image_grid, sharpness
from lightning_vae.image_metrics import blur


def test_sharpness_is_zero_for_flat_images_and_falls_with_blur():
    g = torch.Generator().manual_seed(0)
    assert float(sharpness(torch.full((3, 1, 8, 8), 0.7))) == 0.0
    x = torch.rand(16, 1, 16, 16, generator=g)
    values = [float(sharpness(blur(x, s))) for s in (0.5, 1.0, 2.0)]
    assert float(sharpness(x)) > values[0] > values[1] > values[2] > 0


def test_coverage_counts_the_cells_reached():
    low, high = torch.tensor([0.0]), torch.tensor([1.0])
    even = torch.linspace(0, 1, 1000)[:, None]
    assert float(coverage(even, low, high)) == 1.0
    assert float(coverage(torch.full((1000, 1), 0.55), low, high)) == 0.1  # one cell of ten
    half = torch.linspace(0, 0.5, 1000)[:, None]  # half the box, twice the fair share in each cell
    assert float(coverage(half, low, high)) == 0.5
    two_d = torch.rand(5000, 2, generator=torch.Generator().manual_seed(1))
    assert float(coverage(two_d, torch.zeros(2), torch.ones(2))) == 1.0


def test_image_grid_tiles_in_order():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.25, 0.5, 1.0)])
    grid = image_grid(images, rows=2)  # (2*3+1, 2*3+1, 1)
    assert grid.shape == (7, 7, 1)
    assert float(grid[1, 1, 0]) == 0.0 and float(grid[1, 4, 0]) == 0.25
    assert float(grid[4, 1, 0]) == 0.5 and float(grid[4, 4, 0]) == 1.0
