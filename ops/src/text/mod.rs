//! Text ops: generation and prompt synthesis on language models (Self-Instruct, SELF-ALIGN),
//! sentence embeddings on burn (`embed`), preferences (`icai`, `ai_preference`), and image
//! recaptioning through a vision model (`recaption`).

pub mod ai_preference;
pub mod embed;
pub mod icai;
pub mod inverse_cai;
pub mod llm_generate;
pub mod principle_generate_responses;
pub mod recaption;
pub mod salmon;
pub mod self_instruct;
pub mod tgrt_questions;
pub mod tgrt_topics;
