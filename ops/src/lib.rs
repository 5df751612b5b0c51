//! drover-ops: the built-in ops, and the kits they share.
//!
//! - `kit/`: what several ops use and no op owns: table I/O (`table`), ROUGE-L (`rouge`), the
//!   language-model backend (`llm`), the compute device (`compute`), the sentence encoder
//!   (`encoder`), pulled models (`pulled`), preference pairs (`pairs`).
//! - One directory per family of ops, one file per op, named as in YAML: `data/` (tables),
//!   `programs/` (`command`), `models/` (`read_model`, `merge_models`), `text/` (prompt synthesis,
//!   generation, embeddings), `scaling/` (`scaling_law_fit`), `reward/` (`reward_train`,
//!   `reward_score`, `best_of_n`).
//!
//! No op imports another op's file: what two ops share lives in `kit/`.

pub mod data;
pub mod kit;
pub mod models;
pub mod programs;
pub mod reward;
pub mod scaling;
pub mod text;

use drover_engine::OpRegistry;

/// Every built-in op, with numeric ops on `device`, and the pipeline sections the ops own.
pub fn registry(device: kit::compute::DeviceChoice) -> OpRegistry {
    let mut ops = OpRegistry::new();
    ops.register_section(kit::llm::section());
    ops.register(text::ai_preference::AiPreference);
    ops.register(programs::command::Command);
    ops.register(data::concat::Concat);
    ops.register(data::dedup::Dedup);
    ops.register(text::embed::Embed { device });
    ops.register(text::icai::Icai { device });
    ops.register(text::llm_generate::LlmGenerate);
    ops.register(models::merge_models::MergeModels { device });
    ops.register(text::principle_generate_responses::PrincipleGenerateResponses);
    ops.register(text::recaption::Recaption);
    ops.register(models::read_model::ReadModel);
    ops.register(reward::reward_train::RewardTrain { device });
    ops.register(reward::reward_score::RewardScore { device });
    ops.register(reward::best_of_n::BestOfN);
    ops.register(data::read_table::ReadTable);
    ops.register(data::rouge_dedup::RougeDedup);
    ops.register(data::sample::Sample);
    ops.register(scaling::scaling_law_fit::ScalingLawFit { device });
    ops.register(data::select::Select);
    ops.register(text::self_instruct::SelfInstruct);
    ops.register(text::tgrt_questions::TgrtQuestions);
    ops.register(text::tgrt_topics::TgrtTopics);
    ops
}
