//! The `recaption` op: RECAP's recaptioning (Segalis et al. 2023, arXiv 2310.16656). Each image
//! of a table is sent to a vision-language model behind a chat endpoint, as a base64 `data:` URL
//! in an OpenAI `image_url` part, with a short and/or a long prompt; the captions replace the
//! alt text as the training text of a text-to-image model, which is kept beside them.
//!
//! Input `table`: an image column (paths relative to the pipeline directory or absolute, or the
//! image's bytes) and, optionally, an alt-text column. Output `out`: `image, alt_text,
//! caption_short, caption_long, caption, model`. `mode` says which captions are asked for and
//! which one `caption` holds (`mix`: the long one with probability `p_long`, drawn from the
//! stage seed per input row). A caption longer than `max_text_tokens` (77, CLIP's text limit)
//! is dropped (null), and a row whose `caption` would be dropped is left out, as RECAP drops
//! them. Tokens are counted with the `tokenizer.json` the stage names, else approximated (see
//! [`approx_tokens`]).
//!
//! Images are read and decoded (the `image` crate: PNG and JPEG) before anything is sent; with
//! `resize`, larger ones are scaled down and sent as PNG. A missing file, or one that does not
//! decode, is a counted skip, named in the stage log (paths are data, known only when the table
//! is: no plan-time check can see them). An endpoint that refuses images fails the stage,
//! naming the row and what to change. Every request goes through the memo, keyed by the image's
//! bytes: a rerun sends nothing and a killed stage resumes. Not deterministic (a model server).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortType, Ports, RunCx, StageCx, TableSchema,
    Work,
};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::llm::{self, Client, Message, Part, Prompt, Request, Sampling};
use crate::kit::table;

/// The `with:` block of a `recaption` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecaptionParams {
    /// The endpoint under the pipeline's `llms:`: a vision-language model. Default: `default`.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The column holding each image: a path (text, relative to the pipeline directory or
    /// absolute) or the image's bytes (binary). Default: `image`.
    #[serde(default = "default_image")]
    pub image: String,
    /// Where the image files are: a directory (relative to the pipeline, or absolute) that
    /// holds every image the column names. Its content enters the stage's key, so that an
    /// edited, added or removed image reruns the stage. Required when the column holds paths.
    pub images: Option<String>,
    /// The alt-text column, kept beside the captions. Default: `alt_text` when the table has
    /// one (else the output's `alt_text` is null).
    pub alt_text: Option<String>,
    /// The prompt for the short caption.
    #[serde(default = "default_short")]
    pub short_prompt: String,
    /// The prompt for the long caption.
    #[serde(default = "default_long")]
    pub long_prompt: String,
    /// `short` or `long`: ask for that caption only, and put it in `caption`. `mix`: ask for
    /// both, and put the long one in `caption` with probability `p_long` (RECAP's Mix).
    /// Default: `mix`.
    #[serde(default)]
    pub mode: Mode,
    /// In `mix`, the probability that a row's `caption` is its long caption. Default: 0.5.
    #[serde(default = "default_p_long")]
    pub p_long: f64,
    /// Captions longer than this many tokens are dropped (CLIP's text encoder reads 77, start
    /// and end tokens included). Default: 77.
    #[serde(default = "default_max_tokens")]
    pub max_text_tokens: u32,
    /// A `tokenizer.json` (Hugging Face `tokenizers`) to count tokens with, e.g. CLIP's; its
    /// content enters the key. Default: an approximation of CLIP's BPE (see the README).
    pub tokenizer: Option<String>,
    /// Scale images whose longer side is above this many pixels down to it (aspect kept) and
    /// send them as PNG. Default: send the file's bytes as they are.
    pub resize: Option<u32>,
    /// Sampling params, as the OpenAI API names them. Default: `max_tokens` 120.
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_image() -> String {
    "image".into()
}
fn default_short() -> String {
    "Describe this image in one short sentence.".into()
}
fn default_long() -> String {
    "Describe this image in detail: objects, their colours, counts and positions, and the style.".into()
}
fn default_p_long() -> f64 {
    0.5
}
fn default_max_tokens() -> u32 {
    77
}

/// Which captions are asked for, and which one `caption` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Short,
    Long,
    #[default]
    Mix,
}

impl Mode {
    fn short(self) -> bool {
        self != Mode::Long
    }
    fn long(self) -> bool {
        self != Mode::Short
    }
}

/// Captions each image of a table.
pub struct Recaption;

impl RecaptionParams {
    fn sampling(&self) -> Sampling {
        self.sampling.or(Sampling { max_tokens: Some(120), ..Default::default() })
    }
}

const TEXT: [&str; 3] = ["Utf8", "LargeUtf8", "Utf8View"];
const BYTES: [&str; 3] = ["Binary", "LargeBinary", "BinaryView"];

impl OpKit for Recaption {
    type Params = RecaptionParams;
    const NAME: &str = "recaption";
    const VERSION: u32 = 1;
    const DOC: &str = "Captions each image (a path or bytes) with a vision-language model, short and/or long \
                       (RECAP); outputs image, alt_text, caption_short, caption_long, caption, model.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "One image per row (a path or its bytes), with its alt text.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "image, alt_text, caption_short, caption_long, caption, model.")
    }

    fn check(&self, params: &RecaptionParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let columns = table::input_columns(cx, "table").map_err(|e| errors.push(e)).ok().flatten();
        let mut checked = Checked::default();
        errors.extend(llm::check_one_choice(cx, &params.llm, &params.sampling, &mut checked));
        let mut image_type = "Utf8";
        let mut holds_paths = false;
        if let Some(columns) = columns {
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            match columns.iter().find(|c| c.name == params.image) {
                None => errors.push(table::unknown_column("table", &["image"], &params.image, &names)),
                Some(c) if BYTES.contains(&c.dtype.as_str()) => image_type = "Binary",
                Some(c) if TEXT.contains(&c.dtype.as_str()) => holds_paths = true,
                Some(c) => errors.push(
                    CheckError::param(&["image"], format!("column `{}` of `table` is {}", c.name, c.dtype))
                        .about_column("table", &c.name)
                        .help("the image column holds paths (text) or the images' bytes (binary)"),
                ),
            }
            if let Some(alt) = &params.alt_text
                && let Some(e) = table::check_text_column("table", Some("alt_text"), alt, Some(columns))
            {
                errors.push(e);
            }
        }
        if !(0.0..=1.0).contains(&params.p_long) {
            errors.push(CheckError::param(&["p_long"], format!("p_long {} is outside [0, 1]", params.p_long)));
        }
        if params.max_text_tokens == 0 {
            errors
                .push(CheckError::param(&["max_text_tokens"], "max_text_tokens is 0: every caption would be dropped"));
        }
        if params.resize.is_some_and(|r| r < 16) {
            errors.push(
                CheckError::param(&["resize"], "resize is below 16 pixels")
                    .help("give the longer side in pixels, e.g. 384, or leave `resize` out"),
            );
        }
        if params.short_prompt.trim().is_empty() || params.long_prompt.trim().is_empty() {
            let which = if params.short_prompt.trim().is_empty() { "short_prompt" } else { "long_prompt" };
            errors.push(CheckError::param(&[which], format!("{which} is empty")));
        }
        if let Some(path) = &params.tokenizer {
            let full = drover_engine::paths::resolve(cx.pipeline_dir, path);
            match load_tokenizer(&full) {
                Ok(_) => checked.file_deps.push(PathBuf::from(path)),
                Err(message) => errors.push(
                    CheckError::param(&["tokenizer"], message)
                        .help("give a Hugging Face `tokenizer.json` (CLIP's is in `openai/clip-vit-large-patch14`)"),
                ),
            }
        }
        match &params.images {
            None if holds_paths => errors.push(
                CheckError::param(
                    &["image"],
                    format!("column `{}` holds paths, and no `images:` says where they are", params.image),
                )
                .help(
                    "add `images: DIR`, the directory the images are in: its content enters the stage's key, so an \
                         edited image reruns the stage instead of keeping the caption of the old one",
                ),
            ),
            None => {}
            Some(dir) => {
                let full = drover_engine::paths::resolve(cx.pipeline_dir, dir);
                match std::fs::metadata(&full) {
                    Ok(m) if m.is_dir() => checked.file_deps.push(PathBuf::from(dir)),
                    Ok(_) => errors.push(
                        CheckError::param(&["images"], format!("{} is not a directory", full.display()))
                            .help("name the directory that holds the images"),
                    ),
                    Err(e) => errors.push(
                        CheckError::param(&["images"], format!("cannot read {}: {e}", full.display()))
                            .help("name the directory that holds the images, relative to the pipeline or absolute"),
                    ),
                }
            }
        }
        let schema = TableSchema::with_columns(vec![
            Column::new("image", image_type),
            Column::new("alt_text", "Utf8"),
            Column::new("caption_short", "Utf8"),
            Column::new("caption_long", "Utf8"),
            Column::new("caption", "Utf8"),
            Column::new("model", "Utf8"),
        ]);
        errors.or(checked.output("out", PortType::Table(schema)))
    }

    fn run(&self, params: RecaptionParams, cx: RunCx) -> Work {
        Work::future(async move {
            let prepared = prepare(&params, &cx)?;
            if prepared.kept.is_empty() && !prepared.skipped.is_empty() {
                return Err(nothing_read(&prepared.skipped, &cx.pipeline_dir));
            }
            let counter = match &params.tokenizer {
                Some(path) => Counter::Tokenizer(Box::new(
                    load_tokenizer(&drover_engine::paths::resolve(&cx.pipeline_dir, path)).map_err(OpError::failed)?,
                )),
                None => Counter::Approx,
            };
            cx.progress.set_total(prepared.requests.len() as u64);
            let labels = &prepared.labels;
            let name = move |i: usize| labels[i].clone();
            let responses =
                llm::run_all_named(&prepared.client, prepared.requests.clone(), &cx.progress, Some(&name)).await?;
            llm::append_log(&cx, &llm::summary(&prepared.client));
            let (out, lines) = output(&params, &cx, &prepared, &responses, &counter)?;
            for line in lines {
                llm::append_log(&cx, &line);
            }
            table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
        })
    }

    fn work_left(&self, params: &RecaptionParams, cx: &StageCx) -> Option<String> {
        let prepared = prepare(params, cx).ok()?;
        Some(llm::work_left(&prepared.client, &prepared.requests))
    }
}

/// The table's images, read and checked, and the requests for them.
struct Prepared {
    client: Client,
    input: RecordBatch,
    /// Rows whose image was read, each with the index of its first request.
    kept: Vec<(usize, usize)>,
    /// (row, why) of the rows left out.
    skipped: Vec<(usize, String)>,
    requests: Vec<Request>,
    /// What each request is, for an error: "row 3 (images/a.png), short caption".
    labels: Vec<String>,
}

fn prepare(params: &RecaptionParams, cx: &StageCx) -> Result<Prepared, OpError> {
    let input = read_table(&cx.input("table")?.path)?;
    let column = input
        .column_by_name(&params.image)
        .ok_or_else(|| OpError::failed(format!("the input has no column `{}` (it had at plan time)", params.image)))?;
    let images = Images::of(column)?;
    if let Images::Paths(paths) = &images {
        inside_images(params, paths, &cx.pipeline_dir)?;
    }
    let client = Client::new(cx, &params.llm)?;
    let sampling = params.sampling();
    let (mut kept, mut skipped, mut requests, mut labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in 0..input.num_rows() {
        let what = images.describe(row);
        let image = images.bytes(row, &cx.pipeline_dir).and_then(|bytes| encode(bytes, params.resize));
        let (mime, bytes) = match image {
            Ok(image) => image,
            Err(why) => {
                skipped.push((row, format!("{what}: {why}")));
                continue;
            }
        };
        kept.push((row, requests.len()));
        let asks =
            [(params.mode.short(), &params.short_prompt, "short"), (params.mode.long(), &params.long_prompt, "long")];
        for (_, prompt, which) in asks.into_iter().filter(|(ask, _, _)| *ask) {
            // The image first, then the question, as vision chat templates expect.
            let parts = vec![Part::image(mime, &bytes), Part::Text { text: prompt.clone() }];
            requests.push(Request {
                prompt: Prompt::Chat(vec![Message::parts("user", parts)]),
                sampling: sampling.clone(),
            });
            labels.push(format!("row {row} ({what}), {which} caption"));
        }
    }
    client.seed_by_prompt(&mut requests);
    Ok(Prepared { client, input, kept, skipped, requests, labels })
}

/// Every image path that names a file must lie inside `images:` (links followed), whose
/// content is in the key: an image from elsewhere could change without the stage knowing.
fn inside_images(params: &RecaptionParams, paths: &StringArray, pipeline_dir: &std::path::Path) -> Result<(), OpError> {
    let Some(dir) = &params.images else {
        return Err(OpError::failed(format!(
            "column `{}` holds paths, and no `images:` says where they are (add `images: DIR`)",
            params.image
        )));
    };
    let root = drover_engine::paths::resolve(pipeline_dir, dir);
    let root =
        root.canonicalize().map_err(|e| OpError::failed(format!("cannot read `images:` {}: {e}", root.display())))?;
    for row in (0..paths.len()).filter(|&r| paths.is_valid(r)) {
        let path = drover_engine::paths::resolve(pipeline_dir, paths.value(row));
        // A file that is not there is a counted skip later; only files that are count here.
        if let Ok(real) = path.canonicalize()
            && !real.starts_with(&root)
        {
            return Err(OpError::failed(format!(
                "row {row} ({}): the image is outside `images:` ({}), so its content is not in the stage's key; \
                 move it there, or name a directory that holds every image",
                paths.value(row),
                root.display()
            )));
        }
    }
    Ok(())
}

/// The error when not one image of a non-empty table could be read: most likely paths written
/// relative to something other than the pipeline.
fn nothing_read(skipped: &[(usize, String)], pipeline_dir: &std::path::Path) -> OpError {
    let first: Vec<String> = skipped.iter().take(3).map(|(row, why)| format!("row {row} ({why})")).collect();
    let more = if skipped.len() > 3 { format!("; and {} more", skipped.len() - 3) } else { String::new() };
    OpError::failed(format!(
        "not one of the {} images could be read: {}{more}; image paths are relative to the pipeline's directory ({}) \
         or absolute",
        skipped.len(),
        first.join("; "),
        pipeline_dir.display()
    ))
}

fn read_table(path: &std::path::Path) -> Result<RecordBatch, OpError> {
    let (schema, batches) = table::read_input(path)?;
    arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| OpError::failed(format!("cannot read the input: {e}")))
}

/// An image column: paths or bytes.
enum Images {
    Paths(StringArray),
    Bytes(BinaryArray),
}

impl Images {
    fn of(column: &ArrayRef) -> Result<Images, OpError> {
        let cast = |to: &DataType| {
            arrow::compute::cast(column, to).map_err(|e| OpError::failed(format!("cannot read the image column: {e}")))
        };
        Ok(match column.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Images::Paths(cast(&DataType::Utf8)?.as_any().downcast_ref::<StringArray>().expect("utf8").clone())
            }
            _ => {
                Images::Bytes(cast(&DataType::Binary)?.as_any().downcast_ref::<BinaryArray>().expect("binary").clone())
            }
        })
    }

    /// The row's image, for messages: its path, or its size.
    fn describe(&self, row: usize) -> String {
        match self {
            Images::Paths(a) if a.is_valid(row) => a.value(row).to_string(),
            Images::Bytes(a) if a.is_valid(row) => format!("{} bytes", a.value(row).len()),
            _ => "null".into(),
        }
    }

    fn bytes(&self, row: usize, pipeline_dir: &std::path::Path) -> Result<Vec<u8>, String> {
        match self {
            Images::Paths(a) if a.is_valid(row) => {
                let path = drover_engine::paths::resolve(pipeline_dir, a.value(row));
                std::fs::read(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => format!("no file at {}", path.display()),
                    _ => format!("cannot read {}: {e}", path.display()),
                })
            }
            Images::Bytes(a) if a.is_valid(row) => Ok(a.value(row).to_vec()),
            _ => Err("no image (null)".into()),
        }
    }
}

/// The bytes to send and their type: the file as it is, or scaled down to `resize` and encoded
/// as PNG. Errors say why the image cannot be sent.
fn encode(bytes: Vec<u8>, resize: Option<u32>) -> Result<(&'static str, Vec<u8>), String> {
    let format = image::guess_format(&bytes).map_err(|_| "not an image (PNG or JPEG)".to_string())?;
    let mime = match format {
        image::ImageFormat::Png => "image/png",
        image::ImageFormat::Jpeg => "image/jpeg",
        other => return Err(format!("a {other:?} image; this op reads PNG and JPEG")),
    };
    let decoded = image::load_from_memory_with_format(&bytes, format).map_err(|e| format!("does not decode: {e}"))?;
    match resize {
        Some(side) if decoded.width().max(decoded.height()) > side => {
            let small = decoded.resize(side, side, image::imageops::FilterType::Triangle);
            let mut png = std::io::Cursor::new(Vec::new());
            small.write_to(&mut png, image::ImageFormat::Png).map_err(|e| format!("cannot encode as PNG: {e}"))?;
            Ok(("image/png", png.into_inner()))
        }
        _ => Ok((mime, bytes)),
    }
}

/// How captions are measured against `max_text_tokens`.
enum Counter {
    Tokenizer(Box<tokenizers::Tokenizer>),
    Approx,
}

impl Counter {
    fn count(&self, text: &str) -> Result<usize, OpError> {
        match self {
            Counter::Tokenizer(t) => t
                .encode(text, true)
                .map(|e| e.len())
                .map_err(|e| OpError::failed(format!("the tokenizer cannot encode a caption: {e}"))),
            Counter::Approx => Ok(approx_tokens(text)),
        }
    }
}

fn load_tokenizer(path: &std::path::Path) -> Result<tokenizers::Tokenizer, String> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| format!("cannot read the tokenizer {}: {e}", path.display()))
}

/// An approximation of CLIP's token count, when no `tokenizer.json` is named: a start and an
/// end token, one token per started 7 letters of each word (CLIP's 49k-piece BPE keeps most
/// English words whole and splits rarer, longer ones), one per digit (CLIP's pre-tokenizer
/// splits digits) and one per other character that is not a space (punctuation). It errs
/// towards more tokens on long words, so it drops a little more than CLIP would, not less.
pub fn approx_tokens(text: &str) -> usize {
    let mut count = 2;
    let mut letters = 0usize;
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_alphabetic() || c == '\'' && letters > 0 {
            letters += 1;
            continue;
        }
        count += letters.div_ceil(7);
        letters = 0;
        if !c.is_whitespace() {
            count += 1;
        }
    }
    count
}

/// The output table, and the log's lines on what was left out.
fn output(
    params: &RecaptionParams,
    cx: &RunCx,
    prepared: &Prepared,
    responses: &[llm::Completion],
    counter: &Counter,
) -> Result<(RecordBatch, Vec<String>), OpError> {
    // One draw per input row (skipped ones too), so that a fixed image does not move the others.
    let mut draw = Draw::new(cx.seed, 0);
    let long_rows: Vec<bool> = (0..prepared.input.num_rows())
        .map(|_| (draw.below_u64(1 << 53) as f64) < params.p_long * (1u64 << 53) as f64)
        .collect();
    let (mut take, mut alt, mut short, mut long, mut caption, mut model) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let alt_column = match &params.alt_text {
        Some(name) => prepared.input.column_by_name(name),
        None => prepared.input.column_by_name("alt_text"),
    };
    let alt_text = alt_column
        .map(|c| arrow::compute::cast(c, &DataType::Utf8))
        .transpose()
        .map_err(|e| OpError::failed(format!("cannot read the alt text: {e}")))?;
    let alt_text = alt_text.as_ref().map(|c| c.as_any().downcast_ref::<StringArray>().expect("utf8"));
    let (mut dropped_captions, mut dropped_rows) = (0usize, Vec::new());
    for &(row, first) in &prepared.kept {
        let mut next = first;
        let mut caption_of = |asked: bool| -> Result<Option<String>, OpError> {
            if !asked {
                return Ok(None);
            }
            let text = responses[next].text().trim().to_string();
            next += 1;
            if counter.count(&text)? > params.max_text_tokens as usize {
                dropped_captions += 1;
                return Ok(None);
            }
            Ok(Some(text))
        };
        let s = caption_of(params.mode.short())?;
        let l = caption_of(params.mode.long())?;
        let chosen = match params.mode {
            Mode::Short => s.clone(),
            Mode::Long => l.clone(),
            Mode::Mix if long_rows[row] => l.clone(),
            Mode::Mix => s.clone(),
        };
        let Some(chosen) = chosen else {
            dropped_rows.push(row);
            continue;
        };
        take.push(row as u32);
        alt.push(alt_text.and_then(|a| a.is_valid(row).then(|| a.value(row).to_string())));
        short.push(s);
        long.push(l);
        caption.push(chosen);
        model.push(responses[first].model.clone());
    }
    let image = prepared.input.column_by_name(&params.image).expect("checked in prepare");
    let image = arrow::compute::take(image, &arrow::array::UInt32Array::from(take), None)
        .map_err(|e| OpError::failed(format!("cannot build the output: {e}")))?;
    let image = match image.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => arrow::compute::cast(&image, &DataType::Utf8),
        _ => arrow::compute::cast(&image, &DataType::Binary),
    }
    .map_err(|e| OpError::failed(format!("cannot build the output: {e}")))?;
    let text = |name: &str, nullable: bool, values: Vec<Option<String>>| {
        (Field::new(name, DataType::Utf8, nullable), Arc::new(StringArray::from(values)) as ArrayRef)
    };
    let columns = vec![
        (Field::new("image", image.data_type().clone(), true), image),
        text("alt_text", true, alt),
        text("caption_short", true, short),
        text("caption_long", true, long),
        text("caption", false, caption.into_iter().map(Some).collect()),
        text("model", false, model.into_iter().map(Some).collect()),
    ];
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| OpError::failed(format!("cannot build the output: {e}")))?;
    cx.notes.set("skipped", prepared.skipped.len().to_string());
    cx.notes.set("dropped", dropped_rows.len().to_string());
    let mut lines = Vec::new();
    if !prepared.skipped.is_empty() {
        let n = prepared.skipped.len();
        let each: Vec<String> = prepared.skipped.iter().map(|(row, why)| format!("row {row} ({why})")).collect();
        lines.push(format!("{n} image{} skipped: {}", if n == 1 { "" } else { "s" }, each.join("; ")));
    }
    if dropped_captions > 0 {
        let rows: Vec<String> = dropped_rows.iter().map(usize::to_string).collect();
        lines.push(format!(
            "{dropped_captions} caption{} over {} tokens dropped; {} row{} left out for it{}",
            if dropped_captions == 1 { "" } else { "s" },
            params.max_text_tokens,
            dropped_rows.len(),
            if dropped_rows.len() == 1 { "" } else { "s" },
            if rows.is_empty() { String::new() } else { format!(" (rows {})", rows.join(", ")) }
        ));
    }
    Ok((batch, lines))
}

#[cfg(test)]
mod tests {
    use arrow::array::BinaryArray;
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::testing::{OpTest, batch, column, first_error, texts};

    /// A flat `w` x `h` PNG of one colour.
    fn png(rgb: [u8; 3], w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// The image a request carried, decoded from its data URL.
    fn sent_image(body: &Value) -> image::DynamicImage {
        use base64::Engine as _;
        let url = body["messages"][0]["content"][0]["image_url"]["url"].as_str().unwrap();
        let b64 = url.strip_prefix("data:image/png;base64,").expect("a PNG data URL");
        image::load_from_memory(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    /// Names the colour of the pixel it was sent, and which prompt asked: "short red", "long
    /// blue ..." (the long ones `long_words` words long).
    fn captioner(long_words: usize) -> impl Fn(&Value) -> String + Send + 'static {
        move |body| {
            let pixel = sent_image(body).to_rgb8().get_pixel(0, 0).0;
            let colour = match pixel {
                [255, 0, 0] => "red",
                [0, 255, 0] => "green",
                _ => "blue",
            };
            match body["messages"][0]["content"][1]["text"].as_str().unwrap() {
                p if p == default_short() => format!("short {colour}"),
                _ => format!("long {colour}{}", " word".repeat(long_words)),
            }
        }
    }

    /// Three images on disk beside the pipeline, with alt texts.
    fn pictures(t: &OpTest) -> RecordBatch {
        for (name, rgb) in [("red", [255, 0, 0]), ("green", [0, 255, 0]), ("blue", [0, 0, 255])] {
            std::fs::create_dir_all(t.dir().join("img")).unwrap();
            std::fs::write(t.dir().join(format!("img/{name}.png")), png(rgb, 8, 8)).unwrap();
        }
        texts(&[("image", &["img/red.png", "img/green.png", "img/blue.png"]), ("alt_text", &["a", "b", "c"])])
    }

    fn run(t: &OpTest) -> Result<RecordBatch, OpError> {
        t.run(&Recaption)
    }

    #[test]
    fn each_mode_asks_for_its_captions_and_fills_caption_with_one() {
        for (mode, sent, short, long, caption) in [
            ("short", 3, vec!["short red", "short green", "short blue"], vec!["null"; 3], "short"),
            ("long", 3, vec!["null"; 3], vec!["long red", "long green", "long blue"], "long"),
        ] {
            let server = MockLlm::start(captioner(0));
            let t = OpTest::new(json!({"mode": mode, "images": "img"})).llms(server.llms());
            let table = pictures(&t);
            let t = t.input("table", table);
            let out = run(&t).unwrap();
            assert_eq!(server.sent(), sent, "{mode}");
            assert_eq!(column(&out, "caption_short"), short, "{mode}");
            assert_eq!(column(&out, "caption_long"), long, "{mode}");
            let expected =
                if caption == "short" { column(&out, "caption_short") } else { column(&out, "caption_long") };
            assert_eq!(column(&out, "caption"), expected);
            assert_eq!(column(&out, "image"), ["img/red.png", "img/green.png", "img/blue.png"]);
            assert_eq!(column(&out, "alt_text"), ["a", "b", "c"]);
            assert_eq!(column(&out, "model"), ["m", "m", "m"]);
        }
    }

    #[test]
    fn mix_picks_the_long_caption_with_p_long_from_the_seed() {
        let server = MockLlm::start(captioner(0));
        let rows: Vec<String> = (0..40).map(|i| format!("img/{}.png", ["red", "green", "blue"][i % 3])).collect();
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let picks = |p_long: f64, seed: u64| {
            let t = OpTest::new(json!({"p_long": p_long, "images": "img"})).llms(server.llms()).seed(seed);
            pictures(&t);
            let t = t.input("table", texts(&[("image", &rows)]));
            let out = run(&t).unwrap();
            assert_eq!(column(&out, "alt_text"), vec!["null"; 40], "no alt-text column: nulls");
            column(&out, "caption").iter().map(|c| c.starts_with("long")).collect::<Vec<bool>>()
        };
        assert_eq!(picks(0.0, 1), vec![false; 40]);
        assert_eq!(picks(1.0, 1), vec![true; 40]);
        let half = picks(0.5, 1);
        assert_eq!(half, picks(0.5, 1), "the same seed picks the same captions");
        assert_ne!(half, picks(0.5, 2), "another seed, other picks");
        let longs = half.iter().filter(|l| **l).count();
        assert!((12..=28).contains(&longs), "{longs} of 40 long at p_long 0.5");
        // Both captions of every row, in each of the five runs (each has its own store; a
        // repeated image is asked again, with the next seed, as a repeated prompt is).
        assert_eq!(server.sent(), 5 * 40 * 2);
    }

    #[test]
    fn captions_over_the_token_limit_are_dropped_and_rows_without_a_caption_left_out() {
        let server = MockLlm::start(captioner(80));
        let t = OpTest::new(json!({"mode": "long", "images": "img"})).llms(server.llms());
        let table = pictures(&t);
        let t = t.input("table", table);
        let out = run(&t).unwrap();
        assert_eq!(out.num_rows(), 0);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(log.contains("3 captions over 77 tokens dropped; 3 rows left out for it (rows 0, 1, 2)"), "{log}");

        let t = OpTest::new(json!({"mode": "mix", "p_long": 0.0, "images": "img"})).llms(server.llms());
        let table = pictures(&t);
        let t = t.input("table", table);
        let out = run(&t).unwrap();
        assert_eq!(column(&out, "caption"), ["short red", "short green", "short blue"]);
        assert_eq!(column(&out, "caption_long"), vec!["null"; 3], "dropped, the row kept for its short caption");
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(log.contains("3 captions over 77 tokens dropped; 0 rows left out for it\n"), "{log}");
    }

    #[test]
    fn images_that_are_missing_or_do_not_decode_are_counted_skips() {
        let server = MockLlm::start(captioner(0));
        let t = OpTest::new(json!({"mode": "short", "images": "img"})).llms(server.llms());
        pictures(&t);
        std::fs::write(t.dir().join("img/notes.png"), "not an image").unwrap();
        let mut cut = png([255, 0, 0], 8, 8);
        cut.truncate(40);
        std::fs::write(t.dir().join("img/cut.png"), cut).unwrap();
        let paths = StringArray::from(vec![
            Some("img/red.png"),
            Some("img/gone.png"),
            Some("img/notes.png"),
            Some("img/cut.png"),
            None,
            Some("img/blue.png"),
        ]);
        let t = t.input("table", batch(vec![("image", Arc::new(paths) as ArrayRef)]));
        let out = run(&t).unwrap();
        assert_eq!(column(&out, "caption"), ["short red", "short blue"]);
        assert_eq!(server.sent(), 2);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        let gone = t.dir().join("img/gone.png");
        assert!(
            log.contains(&format!("4 images skipped: row 1 (img/gone.png: no file at {}); ", gone.display())),
            "{log}"
        );
        assert!(
            log.contains("row 2 (img/notes.png: not an image (PNG or JPEG)); row 3 (img/cut.png: does not decode: ")
        );
        assert!(log.contains("; row 4 (null: no image (null))\n"), "{log}");
    }

    #[test]
    fn a_table_of_which_no_image_can_be_read_fails_the_stage() {
        let server = MockLlm::start(captioner(0));
        let t =
            OpTest::new(json!({"images": "."})).llms(server.llms()).input("table", texts(&[("image", &["red.png"])]));
        let e = run(&t).unwrap_err();
        let message = format!(
            "not one of the 1 images could be read: row 0 (red.png: no file at {}); image paths are relative to the \
             pipeline's directory ({}) or absolute",
            t.dir().join("red.png").display(),
            t.dir().display()
        );
        assert_eq!((e.kind, e.message), (drover_engine::OpErrorKind::Failed, message));
        assert_eq!(server.sent(), 0);
    }

    #[test]
    fn images_as_bytes_are_sent_and_kept_as_bytes() {
        let server = MockLlm::start(captioner(0));
        let bytes = BinaryArray::from(vec![png([0, 255, 0], 4, 4).as_slice(), b"GIF89a".as_slice()]);
        let t = OpTest::new(json!({"mode": "short"})).llms(server.llms());
        let t = t.input("table", batch(vec![("image", Arc::new(bytes) as ArrayRef)]));
        let out = run(&t).unwrap();
        assert_eq!(column(&out, "caption"), ["short green"]);
        assert_eq!(out.schema().field_with_name("image").unwrap().data_type(), &DataType::Binary);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert!(log.contains("1 image skipped: row 1 (6 bytes: a Gif image; this op reads PNG and JPEG)"), "{log}");
    }

    #[test]
    fn resize_scales_large_images_down_and_a_rerun_sends_nothing() {
        let server = MockLlm::start(captioner(0));
        let t = OpTest::new(json!({"mode": "short", "resize": 16, "images": "."})).llms(server.llms());
        std::fs::write(t.dir().join("big.png"), png([255, 0, 0], 64, 32)).unwrap();
        std::fs::write(t.dir().join("small.png"), png([0, 0, 255], 8, 8)).unwrap();
        let t = t.input("table", texts(&[("image", &["big.png", "small.png"])]));
        assert_eq!(t.work_left(&Recaption).as_deref(), Some("2 requests to send"));
        run(&t).unwrap();
        let sizes: Vec<(u32, u32)> =
            server.bodies.lock().unwrap().iter().map(|b| (sent_image(b).width(), sent_image(b).height())).collect();
        assert_eq!(sizes, [(16, 8), (8, 8)]);
        assert_eq!(t.work_left(&Recaption).as_deref(), Some("all 2 requests already answered"));
        run(&t).unwrap();
        assert_eq!(server.sent(), 2);
    }

    #[test]
    fn bad_params_and_columns_are_plan_errors() {
        let t = OpTest::new(json!({"image": "images"})).llms(nowhere()).input("table", texts(&[("image", &["a.png"])]));
        let e = first_error(t.check(&Recaption));
        assert_eq!((e.message.as_str(), e.help.as_deref()), ("unknown column `images`", Some("did you mean `image`?")));
        let numbers = batch(vec![("image", Arc::new(arrow::array::Int64Array::from(vec![1])) as ArrayRef)]);
        let t = OpTest::new(json!({})).llms(nowhere()).input("table", numbers);
        assert_eq!(first_error(t.check(&Recaption)).message, "column `image` of `table` is Int64");
        let t = OpTest::new(json!({"p_long": 1.5})).llms(nowhere()).input("table", texts(&[("image", &["a"])]));
        assert_eq!(first_error(t.check(&Recaption)).message, "p_long 1.5 is outside [0, 1]");
        let t = OpTest::new(json!({"alt_text": "alt"})).llms(nowhere()).input("table", texts(&[("image", &["a"])]));
        assert_eq!(first_error(t.check(&Recaption)).message, "unknown column `alt`");
        let t =
            OpTest::new(json!({"tokenizer": "clip.json"})).llms(nowhere()).input("table", texts(&[("image", &["a"])]));
        let e = first_error(t.check(&Recaption));
        assert!(e.message.starts_with("cannot read the tokenizer "), "{}", e.message);
    }

    /// Paths need `images:` (whose content is the key's), and every image read must be in it.
    #[test]
    fn image_paths_need_images_and_must_lie_inside_it() {
        let t = OpTest::new(json!({})).llms(nowhere()).input("table", texts(&[("image", &["img/red.png"])]));
        let e = first_error(t.check(&Recaption));
        assert_eq!(e.message, "column `image` holds paths, and no `images:` says where they are");
        assert!(e.help.as_deref().unwrap().starts_with("add `images: DIR`, the directory the images are in: "));
        let t = OpTest::new(json!({"images": "nowhere"})).llms(nowhere()).input("table", texts(&[("image", &["a"])]));
        assert!(first_error(t.check(&Recaption)).message.starts_with("cannot read "));

        let server = MockLlm::start(captioner(0));
        let t = OpTest::new(json!({"mode": "short", "images": "img"})).llms(server.llms());
        pictures(&t);
        std::fs::write(t.dir().join("stray.png"), png([255, 0, 0], 8, 8)).unwrap();
        let t = t.input("table", texts(&[("image", &["img/red.png", "stray.png"])]));
        let e = run(&t).unwrap_err();
        assert!(e.message.starts_with("row 1 (stray.png): the image is outside `images:` ("), "{}", e.message);
        assert_eq!(server.sent(), 0, "nothing is sent before every image is known to be in the key");
        // Bytes need no `images:`.
        let bytes = BinaryArray::from(vec![png([0, 255, 0], 4, 4).as_slice()]);
        let t = OpTest::new(json!({"mode": "short"})).llms(nowhere());
        let t = t.input("table", batch(vec![("image", Arc::new(bytes) as ArrayRef)]));
        assert!(t.check(&Recaption).is_ok());
    }

    #[test]
    fn the_token_approximation_counts_words_digits_and_punctuation() {
        assert_eq!(approx_tokens(""), 2);
        assert_eq!(approx_tokens("A red square."), 2 + 3 + 1);
        assert_eq!(approx_tokens("photorealistic, 42 cats"), 2 + 2 + 1 + 2 + 1);
        assert_eq!(approx_tokens("it's"), 3);
    }
}
