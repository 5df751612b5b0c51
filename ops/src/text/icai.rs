//! The `icai` op: Inverse Constitutional AI (Findeis et al. 2024, rdnfn/icai at commit
//! cb88e65), principles learned from preference pairs.
//!
//! The algorithm of ICAI's `algorithm/main.py`, every language-model call through the stage's
//! `llm` endpoint and its memo (a rerun sends nothing; a killed stage resumes where its
//! replies stop):
//! 1. propose: for each pair, `principles_per_pair` principles "Select the response that ...",
//!    as JSON `{"principles": [...]}` (ICAI's generator prompt); replies that are not clean
//!    JSON are recovered where possible and counted in the stage log;
//! 2. cluster: embed the principles with a sentence encoder (all-MiniLM-L6-v2 by default, on
//!    the run's `--device`) and k-means them into `num_clusters`, seeded (only identical texts
//!    merge when there are at least as many clusters as distinct principles); each cluster is
//!    summarised by a member drawn at random (or rewritten by the model, `summary: rewrite`);
//! 3. vote: every principle on every pair, A/B order drawn at random for each prompt, at most
//!    `max_votes_per_prompt` principles per prompt, repeated over `seeds` and combined
//!    (`unanimous` or `majority`);
//! 4. filter (for > against, for >= `min_relevance` of all votes, invalid < the valid ones)
//!    and rank by for - against; keep `1.5 * max_principles` and re-cluster them into
//!    `max_principles`, the best-ranked member of each;
//! 5. evaluate: an annotator given the constitution and one given none each pick a response of
//!    every pair (order drawn at random); their agreement with the original preferences.
//!
//! Input `pairs` through the shared pair reader (`kit::pairs`: ICAI's `text_a, text_b,
//! preferred_text`, TRL's `prompt, chosen, rejected`, SALMON's, or a `columns:` mapping); rows
//! that are not pairs are skipped and counted. Outputs: `principles` (every cluster summary
//! with its votes, whether it passed the filters, and its place in the constitution),
//! `votes` (one row per pair and principle), `constitution` (a text blob, "1. ...\n2. ...")
//! and `evaluation` (n and both agreements). Not deterministic (a model server); with the
//! memo, the same replies give the same outputs.
//!
//! Not carried over: ICAI's prompt principles ("Is the prompt ...", added to ICAI after the
//! paper) and its lists of standard test principles (`s0_added_standard_principles_to_test`;
//! `added_principles` takes any list).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortDecl, PortType, Ports, RunCx, StageCx, Work,
    run_blocking,
};
use serde::Deserialize;

use crate::kit::compute::{self, DeviceChoice};
use crate::kit::draw::Draw;
use crate::kit::encoder::{ModelDir, ModelSpec, SentenceEncoder, resolve_model};
use crate::kit::llm::template::{table as out_table, table_type, text_column};
use crate::kit::llm::{self, Client, Completion, Prompt, Request, Sampling};
use crate::kit::pairs::{Pair, PairColumns, PairSchema};
use crate::kit::table;
use crate::text::inverse_cai::cluster::{cluster, final_selection, sample_members};
use crate::text::inverse_cai::prompts::{self, CLUSTER_SUMMARY, CONSTITUTIONAL, GENERATOR, Template, UNGUIDED, VOTING};
use crate::text::inverse_cai::reply::{Agreement, Read, parse_pick, parse_principles};
use crate::text::inverse_cai::select::{Filters, OrderBy, keep_before_reclustering, rank};
use crate::text::inverse_cai::vote::{Combine, Counts, Vote, combine, parse_answers, vote};

/// How each cluster of principles becomes one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    /// A member drawn at random (ICAI's default, `s2_sample_cluster_instead_of_rewrite`).
    #[default]
    Sample,
    /// The model rewrites the cluster as one principle (ICAI's cluster-summary prompt).
    Rewrite,
}

/// The `with:` block of an `icai` stage. Defaults are ICAI's synthetic-data paper config
/// (`exp/configs/001_synthetic_orthogonal`); where the code's own default differs, the doc says.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcaiParams {
    /// The endpoint of `llms:` that proposes, votes and annotates.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// Which columns hold the pairs, when they are not named as ICAI, TRL or SALMON name them.
    #[serde(default)]
    pub columns: Option<PairColumns>,
    /// Principles asked for per pair. Default 2 (the paper's configs; the code's default is 3).
    #[serde(default = "default_per_pair")]
    pub principles_per_pair: usize,
    /// Clusters of proposed principles. Default 40 (the paper's synthetic configs; the code's
    /// default is 3).
    #[serde(default = "default_clusters")]
    pub num_clusters: usize,
    /// How a cluster becomes one principle: `sample` (default) or `rewrite`.
    #[serde(default)]
    pub summary: Summary,
    /// Principles in the constitution. Default 5 (the paper's configs).
    #[serde(default = "default_max_principles")]
    pub max_principles: usize,
    /// How many of the ranked principles go on to the final re-clustering, as a multiple of
    /// `max_principles`. Default 1.5 (ICAI's `ratio_of_max_principles_to_cluster_again`).
    #[serde(default = "default_ratio")]
    pub recluster_ratio: f64,
    /// Times every pair is voted on, each with its own A/B orders. Default 3.
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// How the seeds' votes combine: `unanimous` (default; any disagreement abstains) or
    /// `majority`.
    #[serde(default)]
    pub combine: Combine,
    /// Principles per voting prompt at most. Default 40.
    #[serde(default = "default_max_votes")]
    pub max_votes_per_prompt: usize,
    /// Keep a principle only when it votes for the preferred response more often than against.
    /// Default true.
    #[serde(default = "yes")]
    pub majority_true: bool,
    /// Keep only when `for > abstain`. Default false.
    #[serde(default)]
    pub majority_relevant: bool,
    /// Keep only when invalid votes are fewer than the valid ones. Default true.
    #[serde(default = "yes")]
    pub majority_valid: bool,
    /// Keep only when `for` is at least this share of all votes (0: off). Default 0.1.
    #[serde(default = "default_relevance")]
    pub min_relevance: f64,
    /// Order of the kept principles: `for_minus_against` (default) or `for`.
    #[serde(default)]
    pub order_by: OrderBy,
    /// Principles voted on beside the proposed ones, not clustered (ICAI's
    /// `s0_added_principles_to_test`), e.g. the principles planted in a synthetic set, to see
    /// how they fare. Default none.
    #[serde(default)]
    pub added_principles: Vec<String>,
    /// Measure the constitution's agreement with the labels (two more requests per pair).
    /// Default true.
    #[serde(default = "yes")]
    pub evaluate: bool,
    /// The sentence encoder that embeds principles. Default `{ pulled: minilm }`.
    #[serde(default)]
    pub encoder: ModelSpec,
    /// Sampling for every request; unset fields take ICAI's (temperature 0, max_tokens 1000).
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_per_pair() -> usize {
    2
}
fn default_clusters() -> usize {
    40
}
fn default_max_principles() -> usize {
    5
}
fn default_ratio() -> f64 {
    1.5
}
fn default_seeds() -> usize {
    3
}
fn default_max_votes() -> usize {
    40
}
fn default_relevance() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}

/// ICAI's `get_model` defaults.
fn default_sampling() -> Sampling {
    Sampling { temperature: Some(0.0), max_tokens: Some(1000), ..Sampling::default() }
}

/// Learns a constitution from preference pairs.
pub struct Icai {
    pub device: DeviceChoice,
}

const PRINCIPLES: [(&str, &str); 11] = [
    ("principle", "Int64"),
    ("text", "Utf8"),
    ("members", "Int64"),
    ("for", "Int64"),
    ("against", "Int64"),
    ("abstain", "Int64"),
    ("both", "Int64"),
    ("neither", "Int64"),
    ("invalid", "Int64"),
    ("kept", "Boolean"),
    ("rank", "Int64"),
];
const VOTES: [(&str, &str); 3] = [("row", "Int64"), ("principle", "Int64"), ("vote", "Utf8")];
const EVALUATION: [(&str, &str); 5] = [
    ("n", "Int64"),
    ("agreement_with", "Float64"),
    ("agreement_without", "Float64"),
    ("invalid_with", "Int64"),
    ("invalid_without", "Int64"),
];

/// Draw streams of the stage seed, one per use.
const STREAM_CLUSTER: u64 = 1;
const STREAM_SUMMARY: u64 = 2;
const STREAM_FINAL: u64 = 3;
const STREAM_EVAL: u64 = 4;
const STREAM_VOTE: u64 = 100;

impl OpKit for Icai {
    type Params = IcaiParams;
    const NAME: &str = "icai";
    // 2: the encoder's GELU on the CPU is computed by drover's own vectorised kernel
    // (kit/encoder/gelu.rs), not libm's `erff`: the last bits of every CPU result differ from
    // version 1's (principles are clustered by their embeddings).
    const VERSION: u32 = 2;
    const DOC: &str = "Inverse Constitutional AI: proposes principles that explain preference pairs, clusters, \
                       votes, filters and ranks them into a constitution, and measures how well an annotator \
                       given it agrees with the labels.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one(
            "pairs",
            PortType::any_table(),
            "Preference pairs: text_a, text_b, preferred_text; prompt, chosen, rejected; or a `columns:` mapping.",
        )
    }

    fn outputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("principles", PortType::any_table(), "Every cluster's principle with its votes and rank."),
            PortDecl::new("votes", PortType::any_table(), "One vote per pair and principle."),
            PortDecl::new("constitution", PortType::Blob, "The constitution, \"1. ...\\n2. ...\"."),
            PortDecl::new("evaluation", PortType::any_table(), "Agreement with the labels, with and without it."),
        ])
    }

    fn check(&self, p: &IcaiParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let mut checked = Checked::default();
        match table::input_columns(cx, "pairs") {
            Ok(columns) => {
                if let Err(e) = PairSchema::resolve("pairs", &["columns"], columns, p.columns.as_ref()) {
                    errors.extend(e.0);
                }
            }
            Err(e) => errors.push(e),
        }
        errors.extend(llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked));
        match resolve_model(&p.encoder, cx.pipeline_dir, "encoder", "icai encoder") {
            Ok((model, dep)) => dep.declare(&model, &mut checked),
            Err(e) => errors.push(e),
        }
        for (name, value) in [
            ("principles_per_pair", p.principles_per_pair),
            ("num_clusters", p.num_clusters),
            ("max_principles", p.max_principles),
            ("seeds", p.seeds),
            ("max_votes_per_prompt", p.max_votes_per_prompt),
        ] {
            if value == 0 {
                errors.push(CheckError::param(&[name], format!("{name} must be at least 1")));
            }
        }
        if !(0.0..=1.0).contains(&p.min_relevance) {
            errors.push(
                CheckError::param(&["min_relevance"], format!("min_relevance {} is outside [0, 1]", p.min_relevance))
                    .help("a share of all votes: ICAI uses 0.1; 0 turns the filter off"),
            );
        }
        if p.recluster_ratio.is_nan() || p.recluster_ratio < 1.0 {
            errors.push(
                CheckError::param(&["recluster_ratio"], format!("recluster_ratio {} is below 1", p.recluster_ratio))
                    .help("ICAI re-clusters 1.5 times max_principles"),
            );
        }
        let checked = checked
            .output("principles", table_type(&PRINCIPLES))
            .output("votes", table_type(&VOTES))
            .output("constitution", PortType::Blob)
            .output("evaluation", table_type(&EVALUATION));
        errors.or(checked)
    }

    /// The proposals only: what is asked next depends on their replies.
    fn work_left(&self, p: &IcaiParams, cx: &StageCx) -> Option<String> {
        let pairs = read_pairs(p, cx, &mut Vec::new()).ok()?;
        let client = Client::new(cx, &p.llm).ok()?;
        let mut requests = proposals(p, &pairs);
        client.seed_by_prompt(&mut requests);
        Some(format!(
            "proposals: {} (votes and evaluation follow from the replies)",
            llm::work_left(&client, &requests)
        ))
    }

    fn run(&self, p: IcaiParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::future(async move { run(p, cx, device).await })
    }
}

fn request(template: &Template, fields: &[(&str, &str)], sampling: &Sampling) -> Request {
    Request { prompt: Prompt::Chat(template.messages(fields)), sampling: sampling.clone() }
}

/// Sends one phase's requests (memo first), progress counting this phase.
async fn send(client: &Client, mut requests: Vec<Request>, cx: &RunCx) -> Result<Vec<Completion>, OpError> {
    client.seed_by_prompt(&mut requests);
    cx.progress.set_total(requests.len() as u64);
    llm::run_all(client, requests, &cx.progress).await
}

/// The pairs of the input; the rows skipped go to the log.
fn read_pairs(p: &IcaiParams, cx: &StageCx, log: &mut Vec<String>) -> Result<Vec<Pair>, OpError> {
    let (schema, batches) = table::read_input(&cx.input("pairs")?.path)?;
    let batch = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("icai: {e}")))?;
    let columns = table::table_schema(&schema).columns;
    let pairs = PairSchema::resolve("pairs", &["columns"], columns.as_deref(), p.columns.as_ref())
        .map_err(CheckErrors::into_op_error)?
        .ok_or_else(|| OpError::failed("the columns of `pairs` are not known"))?;
    let read = pairs.read(&batch)?;
    log.extend(read.summary());
    if read.pairs.is_empty() {
        let why = read.summary().unwrap_or_else(|| "it has no rows".to_string());
        return Err(OpError::failed(format!("`pairs` has no preference pair to learn from: {why}")));
    }
    log.push(format!("{} pairs", read.pairs.len()));
    Ok(read.pairs)
}

/// One proposal request per pair (ICAI's generator prompt).
fn proposals(p: &IcaiParams, pairs: &[Pair]) -> Vec<Request> {
    let sampling = p.sampling.or(default_sampling());
    let per_pair = p.principles_per_pair.to_string();
    pairs
        .iter()
        .map(|pair| {
            let (chosen, rejected) = pair.chosen_rejected();
            let fields = [("preferred_sample", chosen), ("rejected_sample", rejected), ("num_principles", &per_pair)];
            request(&GENERATOR, &fields, &sampling)
        })
        .collect()
}

/// Unit vectors of `texts` from the encoder, loaded for this call.
fn embed(model: &ModelDir, device: DeviceChoice, texts: &[&str]) -> Result<Vec<Vec<f32>>, OpError> {
    let compute = compute::resolve(device)?;
    // Inference: autodiff would record every operation for a backward pass that never comes.
    let device = compute.device.clone().without_autodiff();
    let encoder = SentenceEncoder::load(model, &device).map_err(OpError::failed)?;
    let encoded = encoder.encode(texts, model.default_max_tokens(), 32, |_| {}).map_err(OpError::failed)?;
    Ok((0..texts.len()).map(|i| encoded.row(i).to_vec()).collect())
}

/// One voting prompt: which pair, which seed, the order it was shown in, which principles.
struct Ballot {
    pair: usize,
    seed: usize,
    flipped: bool,
    principles: Vec<usize>,
}

async fn run(p: IcaiParams, cx: RunCx, device: DeviceChoice) -> Result<(), OpError> {
    let mut log = Vec::new();
    let pairs = read_pairs(&p, &cx, &mut log)?;
    let (model, _) = resolve_model(&p.encoder, &cx.stage_cx.pipeline_dir, "encoder", "icai encoder")
        .map_err(|e| CheckErrors::from(e).into_op_error())?;
    let client = Client::new(&cx, &p.llm)?;
    let sampling = p.sampling.or(default_sampling());

    // 1. Proposals.
    let replies = send(&client, proposals(&p, &pairs), &cx).await?;
    let mut proposed: Vec<String> = Vec::new();
    let (mut clean, mut recovered, mut failed) = (0, 0, Vec::new());
    for (pair, reply) in pairs.iter().zip(&replies) {
        let (principles, read) = parse_principles(reply.text());
        match read {
            Read::Clean => clean += 1,
            Read::Recovered => recovered += 1,
            Read::Failed => failed.push(pair.row),
        }
        proposed.extend(principles);
    }
    let shown: Vec<String> = failed.iter().take(5).map(|r| r.to_string()).collect();
    let unreadable = match failed.len() {
        0 => String::new(),
        n => format!(" (rows {}{})", shown.join(", "), if n > 5 { ", ..." } else { "" }),
    };
    log.push(format!(
        "proposals: {} replies, {clean} clean JSON, {recovered} recovered from malformed JSON, {} unreadable{unreadable}; \
         {} principles",
        replies.len(),
        failed.len(),
        proposed.len()
    ));
    if let Some(k) = pairs.iter().position(|pair| failed.first() == Some(&pair.row)) {
        let text: String = replies[k].text().chars().take(300).collect();
        log.push(format!("the first unreadable proposal reply (row {}): {text:?}", pairs[k].row));
    }
    if proposed.is_empty() && p.added_principles.is_empty() {
        llm::append_log(&cx, &log.join("\n"));
        return Err(OpError::failed(format!(
            "no principle could be read from the model's {} proposal replies (endpoint `{}`): a model this small \
             may not answer in JSON; use a larger one",
            replies.len(),
            p.llm
        )));
    }

    // 2. Clusters and their summaries.
    let (k, seed) = (p.num_clusters, cx.seed);
    let mut clusters = match proposed.is_empty() {
        true => Vec::new(),
        false => {
            let (texts, model) = (proposed.clone(), model.clone());
            run_blocking(move || cluster(&texts, k, seed ^ STREAM_CLUSTER, |t| embed(&model, device, t))).await?
        }
    };
    let sampled = sample_members(&clusters, seed ^ STREAM_SUMMARY);
    let mut summaries: Vec<String> = sampled.iter().map(|&i| proposed[i].clone()).collect();
    if p.summary == Summary::Rewrite {
        // Only clusters of different texts: ICAI rewrites none when it merely merges identical
        // texts (each is then a cluster of one).
        let differs = |c: &Vec<usize>| c.iter().any(|&i| proposed[i] != proposed[c[0]]);
        let big: Vec<usize> = (0..clusters.len()).filter(|&c| differs(&clusters[c])).collect();
        let requests = big
            .iter()
            .map(|&c| {
                let members: Vec<&str> = clusters[c].iter().map(|&i| proposed[i].as_str()).collect();
                request(&CLUSTER_SUMMARY, &[("principles", &members.join("\n\n"))], &sampling)
            })
            .collect();
        let replies = send(&client, requests, &cx).await?;
        let mut empty = 0;
        for (&c, reply) in big.iter().zip(&replies) {
            match reply.text().trim() {
                "" => empty += 1,
                text => summaries[c] = text.to_string(),
            }
        }
        log.push(format!("{} clusters rewritten by the model, {empty} empty replies kept the drawn member", big.len()));
    }
    log.push(format!("{} principles in {} clusters (num_clusters {k})", proposed.len(), clusters.len()));
    // Added principles, as ICAI adds them: after the summaries, unless already there; they
    // have no members.
    for added in &p.added_principles {
        if !summaries.contains(added) {
            summaries.push(added.clone());
            clusters.push(Vec::new());
        }
    }

    // 3. Votes.
    let mut ballots = Vec::new();
    let mut requests = Vec::new();
    for s in 0..p.seeds {
        let mut order: Vec<usize> = (0..summaries.len()).collect();
        let mut draw = Draw::new(seed, STREAM_VOTE + s as u64);
        draw.shuffle(&mut order);
        for (i, pair) in pairs.iter().enumerate() {
            for chunk in order.chunks(p.max_votes_per_prompt) {
                let flipped = draw.below(2) == 1;
                let (chosen, rejected) = pair.chosen_rejected();
                let (a, b) = if flipped { (rejected, chosen) } else { (chosen, rejected) };
                let texts: Vec<&str> = chunk.iter().map(|&c| summaries[c].as_str()).collect();
                let numbered = prompts::numbered(&texts);
                requests.push(request(
                    &VOTING,
                    &[("sample_a", a), ("sample_b", b), ("summaries", &numbered)],
                    &sampling,
                ));
                ballots.push(Ballot { pair: i, seed: s, flipped, principles: chunk.to_vec() });
            }
        }
    }
    let replies = send(&client, requests, &cx).await?;
    // votes[pair][principle][seed]
    let mut votes = vec![vec![vec![Vote::Invalid; p.seeds]; summaries.len()]; pairs.len()];
    let mut unreadable = 0;
    for (ballot, reply) in ballots.iter().zip(&replies) {
        let answers = parse_answers(reply.text(), ballot.principles.len());
        unreadable += usize::from(answers.is_none());
        for (j, &c) in ballot.principles.iter().enumerate() {
            let answer = answers.as_ref().map_or(crate::text::inverse_cai::vote::Answer::Invalid, |a| a[j]);
            votes[ballot.pair][c][ballot.seed] = vote(answer, ballot.flipped);
        }
    }
    log.push(format!(
        "votes: {} replies over {} seeds, {unreadable} unreadable (all their votes invalid)",
        replies.len(),
        p.seeds
    ));
    let combined: Vec<Vec<Vote>> =
        votes.iter().map(|per_pair| per_pair.iter().map(|seeds| combine(seeds, p.combine)).collect()).collect();
    let mut counts = vec![Counts::default(); summaries.len()];
    for per_pair in &combined {
        for (c, v) in per_pair.iter().enumerate() {
            counts[c].add(*v);
        }
    }

    // 4. Filter, rank, re-cluster.
    let filters = Filters {
        majority_true: p.majority_true,
        majority_relevant: p.majority_relevant,
        majority_valid: p.majority_valid,
        min_relevance: p.min_relevance,
    };
    let kept: Vec<bool> = counts.iter().map(|c| filters.keep(c)).collect();
    let passed = kept.iter().filter(|k| **k).count();
    let limit = keep_before_reclustering(p.max_principles, p.recluster_ratio);
    let ranked = rank(&counts, &filters, p.order_by, Some(limit));
    let ranked_texts: Vec<String> = ranked.iter().map(|&c| summaries[c].clone()).collect();
    let max = p.max_principles;
    let chosen = {
        let (texts, model) = (ranked_texts.clone(), model.clone());
        run_blocking(move || final_selection(&texts, max, seed ^ STREAM_FINAL, |t| embed(&model, device, t))).await?
    };
    let final_principles: Vec<usize> = chosen.iter().map(|&r| ranked[r]).collect();
    let texts: Vec<&str> = final_principles.iter().map(|&c| summaries[c].as_str()).collect();
    let constitution = prompts::constitution(&texts);
    log.push(format!(
        "{passed} of {} principles pass the filters; {} ranked, {} in the constitution",
        summaries.len(),
        ranked.len(),
        final_principles.len()
    ));
    log.push(format!("constitution:\n{constitution}"));

    // 5. Evaluation.
    let mut with = Agreement::default();
    let mut without = Agreement::default();
    if p.evaluate {
        let mut draw = Draw::new(seed, STREAM_EVAL);
        let mut flips = Vec::new();
        let mut requests = Vec::new();
        for pair in &pairs {
            let flipped = draw.below(2) == 1;
            let (chosen, rejected) = pair.chosen_rejected();
            let (a, b) = if flipped { (rejected, chosen) } else { (chosen, rejected) };
            let fields = [("constitution", constitution.as_str()), ("output_1", a), ("output_2", b)];
            requests.push(request(&CONSTITUTIONAL, &fields, &sampling));
            requests.push(request(&UNGUIDED, &fields[1..], &sampling));
            flips.push(flipped);
        }
        let replies = send(&client, requests, &cx).await?;
        for (k, flipped) in flips.iter().enumerate() {
            with.add(parse_pick(replies[2 * k].text()), *flipped);
            without.add(parse_pick(replies[2 * k + 1].text()), *flipped);
        }
        log.push(format!(
            "evaluation on {} pairs: agreement {:.3} with the constitution ({} unreadable), {:.3} without ({} unreadable)",
            with.n,
            with.rate(),
            with.invalid,
            without.rate(),
            without.invalid
        ));
    }
    log.push(llm::summary(&client));
    llm::append_log(&cx, &log.join("\n"));

    write_outputs(&cx, &pairs, &summaries, &clusters, &counts, &kept, &final_principles, &combined)?;
    std::fs::write(&cx.output("constitution")?.path, &constitution)
        .map_err(|e| OpError::io("write the constitution".to_string(), e))?;
    let evaluation = if p.evaluate { vec![(with, without)] } else { Vec::new() };
    let int =
        |name: &str, v: Vec<i64>| (Field::new(name, DataType::Int64, false), Arc::new(Int64Array::from(v)) as ArrayRef);
    let float = |name: &str, v: Vec<f64>| {
        (Field::new(name, DataType::Float64, false), Arc::new(Float64Array::from(v)) as ArrayRef)
    };
    let (schema, batch) = out_table(vec![
        int("n", evaluation.iter().map(|(w, _)| w.n as i64).collect()),
        float("agreement_with", evaluation.iter().map(|(w, _)| w.rate()).collect()),
        float("agreement_without", evaluation.iter().map(|(_, o)| o.rate()).collect()),
        int("invalid_with", evaluation.iter().map(|(w, _)| w.invalid as i64).collect()),
        int("invalid_without", evaluation.iter().map(|(_, o)| o.invalid as i64).collect()),
    ])?;
    table::write_parquet(&cx.output("evaluation")?.path, &schema, &[batch])
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    cx: &RunCx,
    pairs: &[Pair],
    summaries: &[String],
    clusters: &[Vec<usize>],
    counts: &[Counts],
    kept: &[bool],
    final_principles: &[usize],
    combined: &[Vec<Vote>],
) -> Result<(), OpError> {
    let int =
        |name: &str, v: Vec<i64>| (Field::new(name, DataType::Int64, false), Arc::new(Int64Array::from(v)) as ArrayRef);
    let n = summaries.len();
    let col = |f: fn(&Counts) -> u64| counts.iter().map(|c| f(c) as i64).collect::<Vec<i64>>();
    let place: Vec<Option<i64>> =
        (0..n).map(|c| final_principles.iter().position(|&f| f == c).map(|r| r as i64 + 1)).collect();
    let (schema, batch) = out_table(vec![
        int("principle", (0..n as i64).collect()),
        text_column("text", summaries.iter().cloned()),
        int("members", clusters.iter().map(|m| m.len() as i64).collect()),
        int("for", col(|c| c.for_)),
        int("against", col(|c| c.against)),
        int("abstain", col(|c| c.abstain)),
        int("both", col(|c| c.both)),
        int("neither", col(|c| c.neither)),
        int("invalid", col(|c| c.invalid)),
        (Field::new("kept", DataType::Boolean, false), Arc::new(BooleanArray::from(kept.to_vec())) as ArrayRef),
        (Field::new("rank", DataType::Int64, true), Arc::new(Int64Array::from(place)) as ArrayRef),
    ])?;
    table::write_parquet(&cx.output("principles")?.path, &schema, &[batch])?;
    let (mut rows, mut principle, mut words) = (Vec::new(), Vec::new(), Vec::new());
    for (pair, per_pair) in pairs.iter().zip(combined) {
        for (c, v) in per_pair.iter().enumerate() {
            rows.push(pair.row as i64);
            principle.push(c as i64);
            words.push(v.word().to_string());
        }
    }
    let (schema, batch) = out_table(vec![int("row", rows), int("principle", principle), text_column("vote", words)])?;
    table::write_parquet(&cx.output("votes")?.path, &schema, &[batch])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use arrow::array::RecordBatch;
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::testing::{OpTest, column, first_error, minilm, texts};

    const SHORTER: &str = "Select the shorter response.";
    const RHYMES: &str = "Select the response that rhymes.";

    /// A scripted annotator whose taste is "shorter is better": it proposes SHORTER and
    /// RHYMES (the second pair's reply in a code fence, the third's cut short), votes SHORTER
    /// for the shorter sample and RHYMES as not applicable, and picks the shorter output when
    /// given the constitution; without one it names no output.
    fn annotator(body: &Value) -> String {
        let user = body["messages"][1]["content"].as_str().unwrap();
        let between = |from: &str, to: &str| {
            let rest = &user[user.find(from).unwrap() + from.len()..];
            rest[..rest.find(to).unwrap()].to_string()
        };
        if user.starts_with("Selected sample:") {
            let chosen = between("Selected sample:\n", "\n\nOther sample:");
            let list = format!("{{\"principles\": [\"{SHORTER}\", \"{RHYMES}\"]}}");
            return match chosen.as_str() {
                "ok" => format!("```json\n{list}\n```"),
                "no" => format!("{{\"principles\": [\"{SHORTER}\", \"Select the"),
                _ => list,
            };
        }
        if user.starts_with("Sample A:") {
            let (a, b) = (between("Sample A:\n", "\n\nSample B:"), between("Sample B:\n", "\n\nGiven"));
            let shorter = if a.len() < b.len() { "A" } else { "B" };
            let listed = between("selected:\n{", "}\n\nAnswer");
            let answers: Vec<String> = listed
                .split(", ")
                .map(|item| {
                    let (n, text) = item.split_once(": ").unwrap();
                    let answer = if text.contains("shorter") { shorter } else { "None" };
                    format!("{n}: \"{answer}\"")
                })
                .collect();
            return format!("{{{}}}", answers.join(", "));
        }
        if user.starts_with("Select the output (a) or (b) according to the following rules") {
            let (a, b) = (between("## Output (a):\n", "\n\n## Output (b)"), between("## Output (b):\n", "\n\n## Note"));
            return if a.len() < b.len() { "Output (a)".into() } else { "Output (b)".into() };
        }
        "I cannot tell.".into()
    }

    /// Three pairs, the shorter text preferred, one with `text_b` preferred.
    fn pairs() -> RecordBatch {
        texts(&[
            ("text_a", &["yes", "a much longer answer", "no"]),
            ("text_b", &["a longer answer here", "ok", "a rambling reply"]),
            ("preferred_text", &["text_a", "text_b", "text_a"]),
        ])
    }

    fn ports() -> Vec<(&'static str, PortType)> {
        vec![
            ("principles", PortType::any_table()),
            ("votes", PortType::any_table()),
            ("constitution", PortType::Blob),
            ("evaluation", PortType::any_table()),
        ]
    }

    fn read(path: &std::path::Path) -> RecordBatch {
        let (schema, batches) = table::read_input(path).unwrap();
        concat_batches(&schema, &batches).unwrap()
    }

    fn params(extra: Value) -> Value {
        let mut p = json!({"encoder": {"path": minilm().display().to_string()}});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    }

    fn run(t: &OpTest) -> Result<BTreeMap<String, PathBuf>, OpError> {
        t.check(&Icai { device: DeviceChoice::Cpu }).map_err(|e| OpError::failed(format!("{e:?}")))?;
        t.run_ports(&Icai { device: DeviceChoice::Cpu }, &ports())
    }

    #[test]
    fn a_constitution_is_learned_from_scripted_replies_and_a_rerun_sends_nothing() {
        let server = MockLlm::start(annotator);
        let t = OpTest::new(params(json!({}))).llms(server.llms()).input("pairs", pairs());
        let out = run(&t).unwrap();
        // 3 proposals, 3 pairs x 3 seeds x 1 voting prompt, 3 x 2 annotations.
        assert_eq!(server.sent(), 3 + 9 + 6);
        let principles = read(&out["principles"]);
        // Two distinct principles and 40 clusters: identical texts merge (nothing embedded).
        assert_eq!(column(&principles, "text"), [SHORTER, RHYMES]);
        assert_eq!(column(&principles, "members"), ["3", "2"]);
        assert_eq!(column(&principles, "for"), ["3", "0"]);
        assert_eq!(column(&principles, "against"), ["0", "0"]);
        assert_eq!(column(&principles, "abstain"), ["0", "3"]);
        assert_eq!(column(&principles, "kept"), ["true", "false"]);
        assert_eq!(column(&principles, "rank"), ["1", "null"]);
        let votes = read(&out["votes"]);
        assert_eq!(column(&votes, "row"), ["0", "0", "1", "1", "2", "2"]);
        assert_eq!(column(&votes, "vote"), ["for", "abstain", "for", "abstain", "for", "abstain"]);
        assert_eq!(std::fs::read_to_string(&out["constitution"]).unwrap(), format!("1. {SHORTER}"));
        let evaluation = read(&out["evaluation"]);
        assert_eq!(column(&evaluation, "n"), ["3"]);
        assert_eq!(column(&evaluation, "agreement_with"), ["1.0"]);
        assert_eq!(column(&evaluation, "agreement_without"), ["0.0"]);
        assert_eq!(column(&evaluation, "invalid_without"), ["3"]);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(
            log.contains(
                "proposals: 3 replies, 1 clean JSON, 2 recovered from malformed JSON, 0 unreadable; 5 principles"
            ),
            "{log}"
        );
        // The voting prompts flip A and B: both orders were sent.
        let bodies = server.bodies.lock().unwrap().clone();
        // Pair 0 ("yes" preferred over "a longer answer here"), over 3 seeds: was the preferred
        // text shown first?
        let preferred_first: Vec<bool> = bodies
            .iter()
            .filter_map(|b| b["messages"][1]["content"].as_str())
            .filter(|u| u.starts_with("Sample A:\nyes\n") || u.starts_with("Sample A:\na longer answer here\n"))
            .map(|u| u.starts_with("Sample A:\nyes\n"))
            .collect();
        assert_eq!(preferred_first.len(), 3);
        assert!(preferred_first.contains(&true) && preferred_first.contains(&false), "{preferred_first:?}");
        // `drover plan` counts the proposals the memo holds.
        assert_eq!(
            t.work_left(&Icai { device: DeviceChoice::Cpu }).unwrap(),
            "proposals: all 3 requests already answered (votes and evaluation follow from the replies)"
        );
        // A rerun is answered from the memo.
        let again = run(&t).unwrap();
        assert_eq!(server.sent(), 18);
        assert_eq!(read(&again["principles"]), principles);
    }

    #[test]
    fn principles_per_prompt_split_the_votes() {
        let server = MockLlm::start(annotator);
        let t = OpTest::new(params(json!({"max_votes_per_prompt": 1, "evaluate": false, "seeds": 2})))
            .llms(server.llms())
            .input("pairs", pairs());
        let out = run(&t).unwrap();
        // 3 proposals, 3 pairs x 2 seeds x 2 prompts of one principle.
        assert_eq!(server.sent(), 3 + 12);
        assert_eq!(column(&read(&out["principles"]), "for"), ["3", "0"]);
        assert_eq!(read(&out["evaluation"]).num_rows(), 0);
    }

    #[test]
    fn fewer_clusters_embed_the_principles_and_rewrite_a_cluster_with_the_model() {
        // One cluster for two distinct principles: k-means over MiniLM embeddings (k = 1 puts
        // all five proposals together), then the model's rewrite of the cluster.
        let server = MockLlm::start(|body| match body["messages"][0]["content"].as_str().unwrap() {
            s if s.starts_with("Your job is to summarize the principles") => {
                let user = body["messages"][1]["content"].as_str().unwrap();
                assert_eq!(user.matches("\n\n").count(), 4, "five members: {user}");
                "  Select the shorter answer.\n".to_string()
            }
            _ => annotator(body),
        });
        let t = OpTest::new(params(json!({"num_clusters": 1, "summary": "rewrite", "evaluate": false})))
            .llms(server.llms())
            .input("pairs", pairs());
        let out = run(&t).unwrap();
        // 3 proposals, 1 rewrite, 3 pairs x 3 seeds.
        assert_eq!(server.sent(), 3 + 1 + 9);
        let principles = read(&out["principles"]);
        assert_eq!(column(&principles, "text"), ["Select the shorter answer."]);
        assert_eq!(column(&principles, "members"), ["5"]);
        assert_eq!(column(&principles, "for"), ["3"]);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(log.contains("1 clusters rewritten by the model, 0 empty replies kept the drawn member"), "{log}");
    }

    #[test]
    fn identical_texts_are_not_rewritten() {
        let server = MockLlm::start(annotator);
        let t = OpTest::new(params(json!({"summary": "rewrite", "evaluate": false})))
            .llms(server.llms())
            .input("pairs", pairs());
        run(&t).unwrap();
        // No rewrite request: 40 clusters only merge identical texts.
        assert_eq!(server.sent(), 3 + 9);
    }

    #[test]
    fn no_readable_proposal_fails_the_stage() {
        let server = MockLlm::start(|_| "I'd rather not.".to_string());
        let t = OpTest::new(params(json!({}))).llms(server.llms()).input("pairs", pairs());
        let err = run(&t).unwrap_err();
        assert!(
            err.message.starts_with(
                "no principle could be read from the model's 3 proposal replies (endpoint `default`): a model this \
                 small may not answer in JSON"
            ),
            "{}",
            err.message
        );
    }

    #[test]
    fn added_principles_are_voted_on_when_no_proposal_is_readable() {
        let server = MockLlm::start(|body| match body["messages"][1]["content"].as_str().unwrap() {
            u if u.starts_with("Selected sample:") => "I'd rather not.".to_string(),
            _ => annotator(body),
        });
        let t = OpTest::new(params(json!({"added_principles": [SHORTER], "evaluate": false})))
            .llms(server.llms())
            .input("pairs", pairs());
        let out = run(&t).unwrap();
        let principles = read(&out["principles"]);
        assert_eq!(column(&principles, "text"), [SHORTER]);
        assert_eq!(column(&principles, "members"), ["0"]);
        assert_eq!(column(&principles, "for"), ["3"]);
        assert_eq!(std::fs::read_to_string(&out["constitution"]).unwrap(), format!("1. {SHORTER}"));
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(log.contains("the first unreadable proposal reply (row 0): \"I'd rather not.\""), "{log}");
    }

    #[test]
    fn rows_that_are_not_pairs_are_skipped_and_a_table_without_pairs_fails() {
        let server = MockLlm::start(annotator);
        let t = OpTest::new(params(json!({"evaluate": false}))).llms(server.llms()).input(
            "pairs",
            texts(&[
                ("text_a", &["yes", "", "same", "x"]),
                ("text_b", &["a longer answer here", "y", "same", "y"]),
                ("preferred_text", &["text_a", "text_a", "text_a", "text_c"]),
            ]),
        );
        run(&t).unwrap();
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(
            log.starts_with(
                "3 rows skipped: 1 with a missing response (rows 1); 1 with a preference that names neither response \
                 (rows 3); 1 with two identical responses (rows 2)\n1 pairs"
            ),
            "{log}"
        );

        let only_bad = texts(&[("text_a", &["same"]), ("text_b", &["same"]), ("preferred_text", &["text_a"])]);
        let t = OpTest::new(params(json!({}))).llms(server.llms()).input("pairs", only_bad);
        assert_eq!(
            run(&t).unwrap_err().message,
            "`pairs` has no preference pair to learn from: 1 row skipped: 1 with two identical responses (rows 0)"
        );
        let empty = texts(&[("text_a", &[]), ("text_b", &[]), ("preferred_text", &[])]);
        let t = OpTest::new(params(json!({}))).llms(server.llms()).input("pairs", empty);
        assert_eq!(run(&t).unwrap_err().message, "`pairs` has no preference pair to learn from: it has no rows");
    }

    #[test]
    fn params_out_of_range_and_tables_without_pairs_are_plan_errors() {
        let check = |extra: Value, input: RecordBatch| {
            first_error(
                OpTest::new(params(extra))
                    .llms(nowhere())
                    .input("pairs", input)
                    .check(&Icai { device: DeviceChoice::Cpu }),
            )
        };
        let e = check(json!({"seeds": 0}), pairs());
        assert_eq!((e.message.as_str(), e.help), ("seeds must be at least 1", None));
        let e = check(json!({"min_relevance": 1.5}), pairs());
        assert_eq!(e.message, "min_relevance 1.5 is outside [0, 1]");
        assert_eq!(e.help.as_deref(), Some("a share of all votes: ICAI uses 0.1; 0 turns the filter off"));
        let e = check(json!({"recluster_ratio": 0.5}), pairs());
        assert_eq!(e.message, "recluster_ratio 0.5 is below 1");
        let e = check(json!({}), texts(&[("text_a", &["x"]), ("text_b", &["y"])]));
        assert_eq!(e.message, "`pairs` looks like ICAI's `text_a, text_b, preferred_text` but has no `preferred_text`");
    }
}
