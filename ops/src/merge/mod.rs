//! Model merging. So far: reading and writing safetensors weights tensor by tensor
//! (`weights`); the `merge_models` op that builds on it is not written yet.

pub mod weights;
