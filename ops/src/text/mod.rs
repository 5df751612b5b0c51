//! Text ops on language models: generation and prompt synthesis (Self-Instruct, SELF-ALIGN).

pub mod llm_generate;
pub mod principle_generate_responses;
pub mod self_instruct;
pub mod tgrt_questions;
pub mod tgrt_topics;
