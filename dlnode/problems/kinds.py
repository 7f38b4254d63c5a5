"""Learning problems on the end-to-end matrix W: losses ℓ(W), their gradients and random instances.

Every problem here is quadratic in W, ℓ(W) = ½⟨W − W*, H(W − W*)⟩ + ℓ*, with a positive semi-definite
operator H, a minimiser W* and the minimum value ℓ* known at construction. The gradient is E = H(W − W*),
and the loss is evaluated as ½⟨E, W − W*⟩ + ℓ*, which has no cancellation near the minimum (unlike
½tr(WΣ_xxWᵀ) − tr(WΣ_yxᵀ) + ½tr(Σ_yy)).

Each problem is a frozen dataclass of NumPy arrays; `arrays()` hands the arrays to jitted code as a pytree
and `grad_fn` / `loss_fn` are pure functions of (W, arrays), so problems of one kind and shape share one
compiled vector field.

References
----------
Saxe, McClelland, Ganguli (2014), arXiv 1312.6120; Gidel, Bach, Lacoste-Julien (2019), arXiv 1904.13262;
Arora, Cohen, Hu, Luo (2019), arXiv 1905.13655.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import scipy.sparse.linalg

from dlnode.checks import as_array, check_bool, check_optional_int, check_positive_int, check_seed
from dlnode.errors import fail, shown

__all__ = ["KINDS", "Factorization", "MatrixCompletion", "MatrixSensing", "Problem", "Regression", "positive_definite"]


def positive_definite(sxx: np.ndarray) -> bool:
    """Whether a regression's input covariance Σ_xx is positive definite (to 1e-12 of its top eigenvalue): then
    ℓ's Hessian, Δ ↦ ΔΣ_xx, is, and W* is its only minimiser."""
    values = np.linalg.eigvalsh(sxx)
    return bool(values[0] > 1e-12 * max(values[-1], 1e-300))


def _as_matrix(name: str, value: Any, ndim: int = 2) -> np.ndarray:
    return as_array(name, value, ndim)


def _check_seed(seed: Any) -> int:
    return check_seed(seed)


def _check_rank(rank: Any, shape: tuple[int, ...]) -> int:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, (bool, np.bool_)) or not 1 <= rank <= min(shape):
        fail("rank", f"must be an integer in [1, min(shape)] = [1, {min(shape)}]", rank, "pass e.g. rank=2")
    return int(rank)


def _check_shape(shape: Any) -> tuple[int, int]:
    ok = isinstance(shape, (tuple, list)) and len(shape) == 2
    ok = ok and all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in shape)
    if not ok:
        fail("shape", "must be a pair of positive integers (rows, cols)", shape, "pass e.g. shape=(20, 20)")
    return int(shape[0]), int(shape[1])


def _labels(seed: Any, rank: Any, shape: tuple[int, ...]) -> tuple[int | None, int | None]:
    """The optional `seed` and `rank` labels a problem records: None or integers in range (never a bool)."""
    if seed is not None:
        seed = check_seed(seed)
    return seed, check_optional_int("rank", rank, 1, min(shape), "pass the rank of the target, or rank=None")


def _low_rank_target(shape: tuple[int, int], rank: int, rng: np.random.Generator) -> np.ndarray:
    """M = UVᵀ/√r with Gaussian factors, rescaled to ‖M‖_F = √(rows·cols) (= n for n×n; Arora et al. 2019)."""
    u = rng.standard_normal((shape[0], rank))
    v = rng.standard_normal((shape[1], rank))
    m = u @ v.T / np.sqrt(rank)
    return m * (np.sqrt(shape[0] * shape[1]) / np.linalg.norm(m))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Problem:
    """Base of all problems: shapes, the minimiser, and the JSON description stored in datasets."""

    kind: ClassVar[str] = "problem"
    convention: ClassVar[str] = ""

    @property
    def d_in(self) -> int:
        return int(self.w_star.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.w_star.shape[0])

    @property
    def w_star(self) -> np.ndarray:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def loss_min(self) -> float:
        """ℓ* = min ℓ over all matrices W (depth 1); deeper nets reach it when the width allows."""
        return 0.0

    @property
    def minimiser_rank(self) -> int:
        """The rank of W* (its singular values above 1e-10 of the largest; 0 for W* = 0)."""
        s = np.linalg.svd(np.asarray(self.w_star, dtype=np.float64), compute_uv=False)
        return int(np.sum(s > 1e-10 * s[0])) if s.size and s[0] > 0 else 0

    @property
    def unique_minimiser(self) -> bool:
        """Whether W* is ℓ's only minimiser (its Hessian positive definite): every run that converges ends at W*."""
        return False

    def loss_min_in_span(self, w0: Any) -> float:
        """ℓ*_S = min ℓ over the matrices whose column space lies in W₀'s (d_out > d_in), or whose row space lies
        in W₀'s (d_out < d_in): the lowest loss a flow that keeps that space can reach (depth ∞, docs/math.md §5);
        ℓ* for a square W₀ of full rank.

        ℓ is quadratic, so on the subspace S it is minimised where P H(W − W*) = 0 (P the orthogonal projector
        onto S): SciPy's conjugate gradients on P H P with the problem's own Hessian products, to a residual 1e-13
        of P H W*; ℓ at the result is above ℓ*_S by ½⟨δ, Hδ⟩ for its error δ, second order."""
        w0 = _as_matrix("w0", w0)
        if w0.shape != self.w_star.shape:
            fail("w0", f"must have the problem's shape {self.w_star.shape}", shown(f"shape {w0.shape}"),
                 "pass the end-to-end matrix W(0)")  # fmt: skip
        u, s, vt = np.linalg.svd(w0, full_matrices=False)
        rank = int((s > s[0] * max(w0.shape) * np.finfo(np.float64).eps).sum()) if s[0] > 0 else 0
        tall = w0.shape[0] >= w0.shape[1]  # tall (or square): the column space; wide: the row space
        basis = u[:, :rank] if tall else vt[:rank].T

        def project(w: np.ndarray) -> np.ndarray:
            return basis @ (basis.T @ w) if tall else (w @ basis) @ basis.T

        arrays, op = self.arrays(), type(self).hessian_op

        def apply(flat: np.ndarray) -> np.ndarray:
            return project(np.asarray(op(project(flat.reshape(w0.shape)), arrays))).ravel()

        b = project(np.asarray(op(np.asarray(arrays["w_star"]), arrays))).ravel()
        system = scipy.sparse.linalg.LinearOperator((b.size, b.size), matvec=apply, dtype=np.float64)
        x, _ = scipy.sparse.linalg.cg(system, b, rtol=1e-13, atol=0.0, maxiter=4 * max(rank * min(w0.shape), 1))
        return float(type(self).loss_fn(x.reshape(w0.shape), arrays))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the jitted gradient needs (a pytree); includes the minimiser and ℓ*."""
        return {"w_star": self.w_star, "loss_min": np.float64(self.loss_min), **self._operator()}

    def _operator(self) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    # H(Δ): a pure function of (Δ, arrays), written with array methods so that it runs on NumPy or JAX
    hessian_op: ClassVar[Callable[[Any, dict], Any]]

    @classmethod
    def grad_fn(cls, w: Any, arrays: dict) -> Any:
        """∇ℓ(W) = H(W − W*)."""
        return cls.hessian_op(w - arrays["w_star"], arrays)

    @classmethod
    def loss_fn(cls, w: Any, arrays: dict) -> Any:
        """ℓ(W) = ½⟨∇ℓ(W), W − W*⟩ + ℓ*."""
        return cls.loss_from_grad(w, cls.grad_fn(w, arrays), arrays)

    @staticmethod
    def loss_from_grad(w: Any, e: Any, arrays: dict) -> Any:
        return 0.5 * ((w - arrays["w_star"]) * e).sum() + arrays["loss_min"]

    def loss(self, w: Any) -> Any:
        """ℓ(W) for one end-to-end matrix (NumPy or JAX)."""
        return type(self).loss_fn(w, self.arrays())

    def grad(self, w: Any) -> Any:
        """∇ℓ(W) for one end-to-end matrix (NumPy or JAX)."""
        return type(self).grad_fn(w, self.arrays())

    def target(self) -> np.ndarray:
        """−∇ℓ(0): the matrix whose SVD the `decoupled` initialisation aligns to (Σ_yx for regression).

        Not the matrix being fitted: that is `w_star` (the minimiser; `target_matrix` for completion and sensing).
        For an unnormalised completion the two agree on the observed entries only."""
        return -np.asarray(self.grad(np.zeros((self.d_out, self.d_in))))

    def describe(self) -> dict[str, Any]:
        """Kind, shapes, loss convention and seed: what a dataset's `problem` attribute records."""
        out = {"kind": self.kind, "d_in": self.d_in, "d_out": self.d_out, "loss": self.convention}
        out.update(self._extra_description())
        return out

    def _extra_description(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    def __repr__(self) -> str:
        """What defines the problem in a line, not its arrays: e.g. ``MatrixSensing(6 × 6, measurements=40, rank=2,
        seed=0)``."""
        extra = "".join(f", {k}={v!r}" for k, v in self._extra_description().items())
        return f"{type(self).__name__}({self.d_out} × {self.d_in}{extra})"

    def fields(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The dataclass fields that define the problem: (arrays, JSON-able scalars); `from_fields` inverts it."""
        arrays, scalars = {}, {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            else:
                scalars[f.name] = list(value) if isinstance(value, tuple) else value
        return arrays, scalars

    @staticmethod
    def from_fields(kind: Any, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> Problem:
        """Rebuild a problem of `kind` from `fields()` output (e.g. as stored in a dataset), through the
        validating constructor of its class: fields that the constructor would refuse are refused here too."""
        if not isinstance(kind, str) or kind not in KINDS:
            fail("kind", f"must be one of {sorted(KINDS)}", kind, "the stored problem description is damaged")
        cls = KINDS[kind]
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in arrays and n not in scalars]
        extra = sorted((set(arrays) | set(scalars)) - set(names))
        if missing or extra:
            fail(
                "fields",
                f"of a {kind} problem must be exactly {names}",
                shown(f"missing {missing}, unexpected {extra}"),
                "the stored problem description is damaged",
            )
        return cls._rebuild({n: arrays[n] if n in arrays else scalars[n] for n in names})

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> Problem:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Regression(Problem):
    """Linear regression ℓ(W) = (1/2n)‖WX − Y‖²_F on inputs X (d_in, n) and targets Y (d_out, n).

    Internally ∇ℓ = WΣ_xx − Σ_yx = (W − W*)Σ_xx with Σ_xx = XXᵀ/n, Σ_yx = YXᵀ/n and W* the least-squares
    solution, so the loss is evaluated without cancellation.
    """

    sigma_xx: np.ndarray
    sigma_yx: np.ndarray
    minimiser: np.ndarray
    minimum: float = 0.0
    n: int | None = None
    seed: int | None = None
    whitened_values: tuple[float, ...] | None = None

    kind: ClassVar[str] = "regression"
    convention: ClassVar[str] = "(1/2n)||WX - Y||_F^2"

    def __init__(self, X: Any, Y: Any) -> None:
        x = _as_matrix("X", X)
        y = _as_matrix("Y", Y)
        if x.shape[1] != y.shape[1]:
            fail(
                "X and Y",
                "must have the same number of samples (columns)",
                shown(f"X {x.shape}, Y {y.shape}"),
                "pass X as (d_in, n) and Y as (d_out, n)",
            )
        n = x.shape[1]
        w_star = np.linalg.lstsq(x.T, y.T, rcond=None)[0].T
        residual = w_star @ x - y
        self._set(x @ x.T / n, y @ x.T / n, w_star, 0.5 * float(np.sum(residual**2)) / n, n, None, None)

    def _set(self, sxx, syx, w_star, minimum, n, seed, values) -> None:  # noqa: ANN001
        for name, value in zip(
            ("sigma_xx", "sigma_yx", "minimiser", "minimum", "n", "seed", "whitened_values"),
            (sxx, syx, w_star, minimum, n, seed, values),
            strict=True,
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def whitened(cls, singular_values: Any, d_in: int, d_out: int, seed: int = 0) -> Regression:
        """Whitened regression (Σ_xx = I) with Σ_yx = U diag(s) Vᵀ, U, V random orthogonal (Saxe; Gidel).

        The loss is ℓ(W) = ½‖W − Σ_yx‖²_F, i.e. the data are taken to be noiseless (Σ_yy = Σ_yxΣ_yxᵀ).
        """
        for name, val in (("d_in", d_in), ("d_out", d_out)):
            check_positive_int(name, val)
        s = as_array("singular_values", singular_values, ndim=None).ravel()
        if s.size > min(d_in, d_out) or np.any(s <= 0):
            fail(
                "singular_values",
                "must be 1 to min(d_in, d_out) positive finite numbers",
                shown(f"{[float(x) for x in s]} for d_in={d_in}, d_out={d_out}"),
                "drop the extra or non-positive values",
            )
        rng = np.random.default_rng(_check_seed(seed))
        r = s.size
        u = np.linalg.qr(rng.standard_normal((d_out, d_out)))[0][:, :r]
        v = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0][:, :r]
        syx = (u * s) @ v.T
        out = object.__new__(cls)
        out._set(np.eye(d_in), syx, syx.copy(), 0.0, None, int(seed), tuple(float(x) for x in s))
        return out

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> Regression:
        """Regression from its moments (Σ_xx, Σ_yx, W*, ℓ*), checked: Σ_xx symmetric PSD, shapes that chain, W*
        solving the normal equations W*Σ_xx = Σ_yx, ℓ* ≥ 0."""
        sxx = _as_matrix("sigma_xx", fields["sigma_xx"])
        syx = _as_matrix("sigma_yx", fields["sigma_yx"])
        w_star = _as_matrix("minimiser", fields["minimiser"])
        d = sxx.shape[0]
        if sxx.shape != (d, d) or syx.shape[1] != d or w_star.shape != syx.shape:
            fail(
                "sigma_xx, sigma_yx, minimiser",
                "must have shapes (d_in, d_in), (d_out, d_in), (d_out, d_in)",
                shown(f"{sxx.shape}, {syx.shape}, {w_star.shape}"),
                "the stored problem is damaged",
            )
        scale = max(float(np.abs(sxx).max()), 1e-300)
        if not np.allclose(sxx, sxx.T, rtol=0, atol=1e-12 * scale) or np.linalg.eigvalsh(sxx)[0] < -1e-10 * scale:
            fail(
                "sigma_xx",
                "must be symmetric positive semi-definite (X Xᵀ/n)",
                shown("another matrix"),
                "the stored problem is damaged",
            )
        residual = np.abs(w_star @ sxx - syx).max()
        if residual > 1e-8 * (np.abs(syx).max() + np.abs(w_star).max() * scale):
            fail(
                "minimiser",
                "must solve the normal equations W* sigma_xx = sigma_yx",
                shown(f"residual {residual:.3g}"),
                "the stored problem is damaged",
            )
        minimum = fields["minimum"]
        if not isinstance(minimum, (int, float)) or isinstance(minimum, bool) or not 0 <= minimum < np.inf:
            fail(
                "minimum",
                "must be a finite number >= 0 (the least-squares loss)",
                minimum,
                "the stored problem is damaged",
            )
        n = check_optional_int("n", fields["n"], 1, 2**63 - 1, "the stored problem is damaged")
        seed = None if fields["seed"] is None else check_seed(fields["seed"])
        values = fields["whitened_values"]
        if values is not None:
            values = tuple(float(v) for v in as_array("whitened_values", values, ndim=1))
        out = object.__new__(cls)
        out._set(sxx, syx, w_star, float(minimum), n, seed, values)
        return out

    @property
    def w_star(self) -> np.ndarray:
        return self.minimiser

    @property
    def unique_minimiser(self) -> bool:
        return positive_definite(self.sigma_xx)

    @property
    def loss_min(self) -> float:
        return float(self.minimum)

    def _operator(self) -> dict[str, np.ndarray]:
        return {"sigma_xx": self.sigma_xx}

    @staticmethod
    def hessian_op(delta: Any, arrays: dict) -> Any:
        return delta @ arrays["sigma_xx"]

    def target(self) -> np.ndarray:
        return self.sigma_yx

    def _extra_description(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"n": self.n, "seed": self.seed}
        if self.whitened_values is not None:
            extra["whitened"] = True
            extra["singular_values"] = list(self.whitened_values)
        return extra


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MatrixCompletion(Problem):
    """Matrix completion ℓ(W) = ½ Σ_{(i,j)∈Ω} (W_ij − M_ij)², divided by |Ω| when `normalize`.

    References
    ----------
    Arora, Cohen, Hu, Luo (2019), "Implicit regularization in deep matrix factorization", arXiv 1905.13655.
    """

    target_matrix: np.ndarray
    mask: np.ndarray
    normalize: bool = False
    seed: int | None = None
    rank: int | None = None

    kind: ClassVar[str] = "matrix_completion"

    def __init__(
        self,
        target: Any,
        mask: Any,
        normalize: bool = False,
        *,
        seed: int | None = None,
        rank: int | None = None,
    ) -> None:
        m = _as_matrix("target", target)
        k = as_array("mask", mask, ndim=None, allow_bool=True)
        if k.shape != m.shape:
            fail(
                "mask", f"must have the target's shape {m.shape}", shown(f"shape {k.shape}"), "pass a mask like target"
            )
        if not np.all((k == 0) | (k == 1)):
            fail("mask", "must be boolean (or 0/1)", shown("other values"), "pass target != 0 or a bool array")
        k = k.astype(bool)
        if not k.any():
            fail("mask", "must observe at least one entry", shown("an all-False mask"), "set some entries True")
        seed, rank = _labels(seed, rank, m.shape)
        for name, value in zip(
            ("target_matrix", "mask", "normalize", "seed", "rank"),
            (m, k, check_bool("normalize", normalize), seed, rank),
            strict=True,
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def random(
        cls,
        shape: tuple[int, int] = (100, 100),
        rank: int = 5,
        observed: int | float = 2000,
        seed: int = 0,
        normalize: bool = False,
    ) -> MatrixCompletion:
        """Arora et al. (2019)'s instance: M = UVᵀ/√r rescaled to ‖M‖_F = √(rows·cols), entries drawn
        uniformly without replacement (`observed` a count, or a fraction in (0, 1])."""
        shape = _check_shape(shape)
        rank = _check_rank(rank, shape)
        total = shape[0] * shape[1]
        if isinstance(observed, (float, np.floating)) and 0 < observed <= 1:
            count = max(1, int(round(observed * total)))
        elif isinstance(observed, (int, np.integer)) and not isinstance(observed, bool) and 1 <= observed <= total:
            count = int(observed)
        else:
            fail(
                "observed",
                f"must be a count in [1, {total}] or a fraction in (0, 1]",
                observed,
                "pass e.g. observed=0.3",
            )
        rng = np.random.default_rng(_check_seed(seed))
        m = _low_rank_target(shape, rank, rng)
        mask = np.zeros(total, dtype=bool)
        mask[rng.choice(total, size=count, replace=False)] = True
        return cls(m, mask.reshape(shape), normalize, seed=int(seed), rank=rank)

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> MatrixCompletion:
        return cls(
            fields["target_matrix"], fields["mask"], fields["normalize"], seed=fields["seed"], rank=fields["rank"]
        )

    @property
    def w_star(self) -> np.ndarray:
        return self.target_matrix

    @property
    def unique_minimiser(self) -> bool:
        return bool(self.mask.all())

    def _operator(self) -> dict[str, np.ndarray]:
        weight = 1.0 / self.mask.sum() if self.normalize else 1.0
        return {"weight": self.mask * weight}

    @staticmethod
    def hessian_op(delta: Any, arrays: dict) -> Any:
        return arrays["weight"] * delta

    @property
    def convention(self) -> str:  # type: ignore[override]
        return "(1/2|Omega|) sum_Omega (W_ij - M_ij)^2" if self.normalize else "(1/2) sum_Omega (W_ij - M_ij)^2"

    def target(self) -> np.ndarray:
        return self.target_matrix

    def _extra_description(self) -> dict[str, Any]:
        return {"observed": int(self.mask.sum()), "normalize": self.normalize, "rank": self.rank, "seed": self.seed}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MatrixSensing(Problem):
    """Matrix sensing ℓ(W) = (1/2m) Σ_i (⟨A_i, W⟩ − y_i)² with noiseless y_i = ⟨A_i, M⟩."""

    sensing: np.ndarray
    target_matrix: np.ndarray
    seed: int | None = None
    rank: int | None = None

    kind: ClassVar[str] = "matrix_sensing"
    convention: ClassVar[str] = "(1/2m) sum_i (<A_i, W> - y_i)^2"

    def __init__(self, A: Any, target: Any, *, seed: int | None = None, rank: int | None = None) -> None:
        a = _as_matrix("A", A, ndim=3)
        m = _as_matrix("target", target)
        if a.shape[1:] != m.shape:
            fail(
                "A",
                f"must have shape (m, *target.shape) = (m, {m.shape[0]}, {m.shape[1]})",
                shown(f"shape {a.shape}"),
                "stack m matrices of the target's shape",
            )
        seed, rank = _labels(seed, rank, m.shape)
        for name, value in zip(("sensing", "target_matrix", "seed", "rank"), (a, m, seed, rank), strict=True):
            object.__setattr__(self, name, value)

    @classmethod
    def random(cls, shape: tuple[int, int] = (20, 20), rank: int = 2, measurements: int = 200, seed: int = 0):
        """Gaussian A_i with N(0, 1) entries and a low-rank target M = UVᵀ/√r with ‖M‖_F = √(rows·cols)."""
        shape = _check_shape(shape)
        rank = _check_rank(rank, shape)
        check_positive_int("measurements", measurements, "pass e.g. measurements=200")
        rng = np.random.default_rng(_check_seed(seed))
        m = _low_rank_target(shape, rank, rng)
        a = rng.standard_normal((int(measurements), *shape))
        return cls(a, m, seed=int(seed), rank=rank)

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> MatrixSensing:
        return cls(fields["sensing"], fields["target_matrix"], seed=fields["seed"], rank=fields["rank"])

    @property
    def w_star(self) -> np.ndarray:
        return self.target_matrix

    @property
    def unique_minimiser(self) -> bool:
        flat = self.sensing.reshape(self.sensing.shape[0], -1)
        return flat.shape[0] >= flat.shape[1] and int(np.linalg.matrix_rank(flat)) == flat.shape[1]

    def _operator(self) -> dict[str, np.ndarray]:
        return {"sensing": self.sensing}

    @staticmethod
    def hessian_op(delta: Any, arrays: dict) -> Any:
        a = arrays["sensing"]
        r = (a * delta[None]).sum(axis=(1, 2))
        return (r[:, None, None] * a).sum(axis=0) / a.shape[0]

    def target(self) -> np.ndarray:
        return self.target_matrix

    def _extra_description(self) -> dict[str, Any]:
        return {"measurements": int(self.sensing.shape[0]), "rank": self.rank, "seed": self.seed}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Factorization(Problem):
    """Full matrix factorisation ℓ(W) = ½‖W − M‖²_F (every entry observed)."""

    target_matrix: np.ndarray

    kind: ClassVar[str] = "factorization"
    convention: ClassVar[str] = "(1/2)||W - M||_F^2"

    def __init__(self, M: Any) -> None:
        object.__setattr__(self, "target_matrix", _as_matrix("M", M))

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> Factorization:
        return cls(fields["target_matrix"])

    @property
    def w_star(self) -> np.ndarray:
        return self.target_matrix

    @property
    def unique_minimiser(self) -> bool:
        return True

    def _operator(self) -> dict[str, np.ndarray]:
        return {}

    @staticmethod
    def hessian_op(delta: Any, arrays: dict) -> Any:
        return delta

    def target(self) -> np.ndarray:
        return self.target_matrix


KINDS: dict[str, type[Problem]] = {
    cls.kind: cls for cls in (Regression, MatrixCompletion, MatrixSensing, Factorization)
}
