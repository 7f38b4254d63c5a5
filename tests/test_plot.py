"""Every figure of dlnode.analysis.plot renders a non-blank, labelled PNG from a small dataset."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from reference_runs import build_dataset, decoupled_runs, gd_states, log_steps, univariate_problem

import dlnode as dln
import dlnode.analysis.accessor  # noqa: F401  (registers ds.dln)
from dlnode.analysis import plot
from dlnode.analysis.discrete import gd_errors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def staircase():
    """GD on whitened regression (s = 4, 2, 1) at depths 1, 2, 3 and ∞ (an end-to-end stand-in), two scales."""
    prob = dln.Regression.whitened([4.0, 2.0, 1.0], 3, 3, seed=0)
    steps = log_steps(1500, 60)
    runs = {}
    for depth in (1, 2, 3):
        for scale in (1e-6, 0.05):
            for seed in (0, 1):
                layers = dln.init_layers(prob, depth, "gaussian", scale, seed)
                runs[(depth, scale, seed)] = gd_states(prob, layers, 0.02, steps)
                if depth == 3:
                    runs[(np.inf, scale, seed)] = [dln.product(state) for state in runs[(depth, scale, seed)]]
    return build_dataset(prob, runs, steps * 0.02, lr=0.02)


@pytest.fixture(scope="module")
def flat_minima():
    """GD to convergence on univariate regression from init scale 0.3 at depths 1 to 4 (final weights only)."""
    prob = univariate_problem()
    runs = {}
    for depth in (1, 2, 3, 4):
        for seed in (0, 1):
            layers = dln.init_layers(prob, depth, "gaussian", 0.3, seed, width=4)
            runs[(depth, 0.3, seed)] = gd_states(prob, layers, 0.05, [0, 2000])
    return prob, build_dataset(prob, runs, [0.0, 100.0], lr=0.05).drop_vars("weights")


def check_png(fig: Figure, path) -> None:  # noqa: ANN001
    assert isinstance(fig, Figure)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.ptp(pixels[..., :3]) > 0.5  # something is drawn: not a blank canvas
    assert len(data) < 300_000  # small enough for a repository and a slide
    # facet grids label their outer panels only; every figure names both of its axes
    assert any(ax.get_xlabel() for ax in fig.axes) and any(ax.get_ylabel() for ax in fig.axes)


@pytest.mark.parametrize("kind", ["loss", "singular_values", "rank_staircase", "effective_rank"])
def test_trajectory_plots_write_a_png(staircase, kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    check_png(plot.PLOTS[kind](staircase, path=path), path)


def test_sharpness_plot_with_bounds(flat_minima, tmp_path):
    prob, ds = flat_minima
    path = tmp_path / "sharpness.png"
    fig = plot.PLOTS["sharpness"](ds, prob, path=path)
    check_png(fig, path)
    assert any("S_{\\min}" in text.get_text() for text in fig.axes[0].get_legend().get_texts())
    with pytest.raises(ValueError, match="problem is required"):
        plot.sharpness(ds)


def test_sharpness_saved_along_a_run_is_drawn_at_its_last_save(tmp_path):
    """A run with ``sharpness=1`` holds S at every save (dims eig and time): the figure draws one point per run, its
    top eigenvalue at the last save, which equals the sharpness computed afresh at the final weights."""
    prob = univariate_problem()
    ds = dln.integrate(prob, depth=3, scale=0.3, seed=[0, 1], method="gd", lr=0.05, t1=5.0, sharpness=1,
                       progress=False)  # fmt: skip
    assert {"eig", "time"} <= set(ds["sharpness"].dims)
    path = tmp_path / "sharpness.png"
    fig = plot.sharpness(ds, path=path)
    check_png(fig, path)
    drawn = np.concatenate([line.get_ydata() for line in fig.axes[0].get_lines() if line.get_marker() == "o"])
    fresh = ds.drop_vars("sharpness").dln.sharpness().values.ravel()
    np.testing.assert_allclose(np.sort(drawn), np.sort(fresh), rtol=1e-8)


@pytest.fixture(scope="module")
def noisy():
    """SGD with four noise paths (a ``path`` dim) at depths 2 and 3, with S saved along the way."""
    prob = dln.MatrixSensing.random(shape=(4, 4), rank=1, measurements=30, seed=0)
    return dln.integrate(prob, depth=[2, 3], scale=0.3, method="sgd", lr=0.05, batch=2, paths=4, t1=5.0,
                         sharpness=1, progress=False)  # fmt: skip


@pytest.mark.parametrize("kind", ["loss", "singular_values", "rank_staircase", "sharpness", "effective_rank"])
def test_every_figure_draws_noise_paths(noisy, kind, tmp_path):
    """A dataset with noise paths: each path is drawn as a run of its own (the loss: one line per depth and path),
    where every figure but the sharpness's used to fail on the extra dim."""
    path = tmp_path / f"{kind}.png"
    fig = plot.PLOTS[kind](noisy, path=path)
    check_png(fig, path)
    if kind == "loss":
        assert len(fig.axes[0].get_lines()) == 2 * 4


def test_gd_error_plot_shows_the_fitted_order(tmp_path):
    flow, runs = decoupled_runs([0.02, 0.01, 0.005], end_time=1.0)
    path = tmp_path / "gd_error.png"
    fig = plot.PLOTS["gd_error"](gd_errors(flow, runs), path=path)
    check_png(fig, path)
    assert any("slope" in text.get_text() for text in fig.axes[0].get_legend().get_texts())


def test_accessor_plot_namespace(staircase, tmp_path):
    path = tmp_path / "sv.png"
    check_png(staircase.dln.plot.singular_values(path=path), path)
    assert isinstance(staircase.dln.plot.loss(), Figure)
    assert set(plot.PLOTS) == {"loss", "singular_values", "rank_staircase", "sharpness", "effective_rank", "gd_error"}


def test_many_singular_values_get_a_colour_bar_not_a_legend(tmp_path):
    # 30 singular values: a legend would squash the panels; they are coloured by index on one colour bar
    prob = dln.MatrixCompletion.random(shape=(30, 30), rank=3, observed=450, seed=0)
    steps = log_steps(300, 30)
    runs = {(depth, 1e-2, 0): gd_states(prob, dln.init_layers(prob, depth, "gaussian", 1e-2, 0), 0.01, steps)
            for depth in (1, 2)}  # fmt: skip
    ds = build_dataset(prob, runs, steps * 0.01, lr=0.01)
    path = tmp_path / "sv30.png"
    fig = plot.singular_values(ds, path=path)
    check_png(fig, path)
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.axes) == 3 and "index $k$" in fig.axes[-1].get_ylabel()  # two panels and the colour bar


def test_few_singular_values_get_typeset_subscripts(staircase):
    legend = plot.singular_values(staircase).axes[len(staircase["depth"]) - 1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [r"$\sigma_{1}$", r"$\sigma_{2}$", r"$\sigma_{3}$"]
