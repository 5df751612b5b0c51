//! drover-ops: the built-in ops. One file per op; `registry()` lists them all.

pub mod command;
pub mod compute;
pub mod concat;
pub mod dedup;
pub mod llm;
pub mod llm_generate;
pub mod merge;
pub mod principle_generate_responses;
pub mod read_model;
pub mod read_table;
pub mod rouge;
pub mod rouge_dedup;
pub mod sample;
pub mod scaling;
pub mod secrets;
pub mod select;
pub mod self_instruct;
pub mod supervise;
pub mod table;
pub mod tgrt;

use drover_engine::OpRegistry;

/// Every built-in op.
pub fn registry() -> OpRegistry {
    let mut ops = OpRegistry::new();
    ops.register(command::Command);
    ops.register(concat::Concat);
    ops.register(dedup::Dedup);
    ops.register(llm_generate::LlmGenerate);
    ops.register(merge::MergeModels);
    ops.register(principle_generate_responses::PrincipleGenerateResponses);
    ops.register(read_model::ReadModel);
    ops.register(read_table::ReadTable);
    ops.register(rouge_dedup::RougeDedup);
    ops.register(sample::Sample);
    ops.register(scaling::ScalingLawFit);
    ops.register(select::Select);
    ops.register(self_instruct::SelfInstruct);
    ops.register(tgrt::TgrtQuestions);
    ops.register(tgrt::TgrtTopics);
    ops
}
