//! The parts of `merge_models` (the op is `models/merge_models.rs`), each owning one concern:
//!
//! - `config` parses and checks mergekit's schema (methods, parameters with gradients and
//!   filters, precedence);
//! - `plan` lays out every output tensor with its sources and per-tensor parameters, and finds
//!   every mismatch before anything is read;
//! - `methods` does the arithmetic on one tensor at a time, on the CPU, handing sign election
//!   and slerp to `device` (burn, on a GPU) when it is given one;
//! - `weights` is the safetensors I/O (memory-mapped reads, streamed shard writes);
//! - `par` splits element passes across threads in fixed chunks.
//!
//! Imports point one way, down this order: `methods` -> `plan` -> `config` -> `weights` ->
//! `par`, with `methods` also importing `device`, `weights` and `par` directly. `device` and
//! `par` import nothing from the merge: what the GPU path shares with the CPU path (slerp's
//! coefficients) is passed in by `methods`.

pub mod config;
pub mod device;
pub mod methods;
pub mod par;
pub mod plan;
pub mod weights;

#[cfg(test)]
mod tests {
    /// The parts, lowest first: each may import only the parts before it.
    const PARTS: [(&str, &str); 6] = [
        ("par", include_str!("par.rs")),
        ("device", include_str!("device.rs")),
        ("weights", include_str!("weights.rs")),
        ("config", include_str!("config.rs")),
        ("plan", include_str!("plan.rs")),
        ("methods", include_str!("methods.rs")),
    ];

    /// The parts a file names through `super::` (`super::a::b`, `super::{a, b::c}`).
    fn imports(text: &str) -> Vec<&str> {
        fn ident(s: &str) -> &str {
            s.trim().split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")
        }
        let mut out = Vec::new();
        for after in text.split("super::").skip(1) {
            match after.strip_prefix('{') {
                Some(group) => out.extend(group.split('}').next().unwrap_or("").split(',').map(ident)),
                None => out.push(ident(after)),
            }
        }
        out
    }

    #[test]
    fn the_parts_import_one_way() {
        for (i, (part, text)) in PARTS.iter().enumerate() {
            // A test module's `use super::*` is its own file's, not another part's.
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for name in imports(code) {
                let later = PARTS[i..].iter().any(|(p, _)| *p == name);
                assert!(
                    !later,
                    "`{part}` imports `{name}`, which is not below it (order: par, device, weights, config, plan, methods)"
                );
            }
        }
    }

    #[test]
    fn imports_are_read_from_paths_and_groups() {
        assert_eq!(imports("use super::weights::X;\nlet y = super::device::f();"), ["weights", "device"]);
        assert_eq!(imports("use super::{formula, plot::Figure};"), ["formula", "plot"]);
    }
}
