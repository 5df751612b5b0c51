//! Text ops: generation and prompt synthesis on language models (Self-Instruct, SELF-ALIGN),
//! and sentence embeddings on burn (`embed`).

pub mod ai_preference;
pub mod embed;
pub mod icai;
pub mod inverse_cai;
pub mod llm_generate;
pub mod principle_generate_responses;
pub mod salmon;
pub mod self_instruct;
pub mod tgrt_questions;
pub mod tgrt_topics;
