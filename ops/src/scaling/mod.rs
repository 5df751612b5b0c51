//! The `scaling_law_fit` op and its parts. Imports point one way, from the op down:
//! `scaling_law_fit` -> `law` -> `formula`; `scaling_law_fit` -> `objective` -> {`formula`,
//! `lbfgs`}; `scaling_law_fit` -> `plot`. `lbfgs` and `plot` know nothing of scaling laws.
//!
//! - `formula`: a small expression language, evaluated on tensors and on f64.
//! - `law`: chinchilla, power and custom laws: formula, grid of starts, reported values.
//! - `objective`: the batched Huber objective, with burn's autodiff.
//! - `lbfgs`: L-BFGS for thousands of problems in lock step, its arithmetic in f64 on the host.
//! - `plot`: SVG and PNG through plotters, with an embedded font.

pub mod formula;
pub mod law;
pub mod lbfgs;
pub mod objective;
pub mod plot;
pub mod scaling_law_fit;
