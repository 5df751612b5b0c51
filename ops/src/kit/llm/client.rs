//! The client every text op shares: OpenAI-compatible requests with a response memo, bounded
//! concurrency, a request rate, retries with backoff, and progress.
//!
//! Each request is keyed by what decides its response (the endpoint's model identity, the
//! messages or prompt, every sampling param, the seed) and its response is kept in the store's
//! memo as soon as it arrives. A stage that dies half-way therefore resumes from the last
//! response received, and a rerun that changes nothing upstream of the requests sends none.
//! The API key is read from the environment when a request is sent and is never written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use drover_engine::{Memo, OpError, StageCx, hash};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::endpoint::{Endpoint, Target};
use super::serve;

/// Bumped when the request key or the stored response changes shape.
const MEMO_FORMAT: &str = "drover llm response v1";

/// One message of a chat. The order of its fields is part of every memo key (see `Body`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message { role: role.to_string(), content: Content::Text(content.into()) }
    }

    /// A message of several parts (text and images), as OpenAI's vision API takes them.
    pub fn parts(role: &str, parts: Vec<Part>) -> Message {
        Message { role: role.to_string(), content: Content::Parts(parts) }
    }
}

/// A message's content: plain text, written as a JSON string exactly as before parts existed
/// (so every memo key of a text request is unchanged), or a list of parts.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// Text is debug-printed as the bare string it was before parts existed: a chat's debug text
/// is what `Client::seed_by_prompt` derives a row's seed from, so it must not change.
impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Text(t) => std::fmt::Debug::fmt(t, f),
            Content::Parts(p) => f.debug_list().entries(p).finish(),
        }
    }
}

impl Content {
    /// The text of a plain-text content; `None` for parts.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Content::Text(t) => Some(t),
            Content::Parts(_) => None,
        }
    }
}

/// One part of a message: `{"type":"text","text":..}` or
/// `{"type":"image_url","image_url":{"url":..}}` (a `data:` URL carries the image's bytes, so
/// they enter the memo key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

impl Part {
    /// An image as a base64 `data:` URL of its bytes.
    pub fn image(mime: &str, bytes: &[u8]) -> Part {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        Part::ImageUrl { image_url: ImageUrl { url: format!("data:{mime};base64,{b64}") } }
    }
}

/// Where an image part's picture is: a URL, usually a `data:` URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

impl Sampling {
    /// These params, with an op's `defaults` where a field is unset.
    pub fn or(&self, defaults: Sampling) -> Sampling {
        Sampling {
            temperature: self.temperature.or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            max_tokens: self.max_tokens.or(defaults.max_tokens),
            stop: self.stop.clone().or(defaults.stop),
            seed: self.seed.or(defaults.seed),
            logit_bias: self.logit_bias.clone().or(defaults.logit_bias),
            n: self.n.or(defaults.n),
            logprobs: self.logprobs.or(defaults.logprobs),
            presence_penalty: self.presence_penalty.or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(defaults.frequency_penalty),
        }
    }
}

/// What is sent: a chat, or a plain prompt for `/completions`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

/// Sampling params, as the OpenAI API names them. Unset ones are not sent (the server's
/// defaults apply) and do not enter the key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    /// The seed sent with each request. Default: derived from the stage's seed and the row,
    /// so that rows sample independently and a rerun asks the same questions.
    pub seed: Option<u64>,
    /// Token id (as a string) to a bias in [-100, 100]. llama.cpp's server also takes a piece
    /// of text as the key and biases each of its tokens.
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Completions per request.
    pub n: Option<u32>,
    /// Return the chosen tokens' log probabilities, with this many alternatives each (0: none).
    pub logprobs: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// One request: a prompt and how to sample it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    pub sampling: Sampling,
}

/// The JSON body sent for a request (the model is added beside it when sending), and what its
/// memo key is computed over. A struct, so that its bytes are the same in every build: serde
/// writes a struct's fields in declaration order, where a `serde_json::Value` object's key order
/// depends on serde_json's `preserve_order` feature (insertion order with it, sorted without).
/// The body used to be such a `Value`, built with the feature on; the fields below are in the
/// order it was built in, so existing memos keep answering. Unset params are left out.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<&'a BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Logprobs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
}

/// `logprobs` as each API takes it: a flag for a chat (the count goes in `top_logprobs`), the
/// count for a plain completion.
#[derive(Serialize)]
#[serde(untagged)]
enum Logprobs {
    Chat(bool),
    Text(u32),
}

impl<'a> Body<'a> {
    fn of(request: &'a Request) -> Body<'a> {
        let s = &request.sampling;
        let (messages, prompt, logprobs, top_logprobs) = match &request.prompt {
            Prompt::Chat(m) => (Some(m.as_slice()), None, s.logprobs.map(|_| Logprobs::Chat(true)), s.logprobs),
            Prompt::Text(t) => (None, Some(t.as_str()), s.logprobs.map(Logprobs::Text), None),
        };
        Body {
            messages,
            prompt,
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            stop: s.stop.as_deref(),
            seed: s.seed,
            logit_bias: s.logit_bias.as_ref(),
            n: s.n,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            logprobs,
            top_logprobs,
        }
    }
}

/// What is sent: the body, then the model id.
#[derive(Serialize)]
struct Sent<'a> {
    #[serde(flatten)]
    body: Body<'a>,
    model: &'a str,
}

/// One choice of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    /// `stop`, `length`, ... as the server said (empty when it did not).
    pub finish_reason: String,
    /// The server's logprobs object, as it sent it (formats differ between servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// A response, as kept in the memo.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub choices: Vec<Choice>,
    /// The model the server says answered.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Completion {
    /// The first choice's text.
    pub fn text(&self) -> &str {
        self.choices.first().map_or("", |c| c.text.as_str())
    }

    pub fn finish_reason(&self) -> &str {
        self.choices.first().map_or("", |c| c.finish_reason.as_str())
    }
}

/// Counters for the progress line and the stage log.
#[derive(Default, Debug)]
pub struct Stats {
    pub sent: AtomicU64,
    pub cached: AtomicU64,
    pub in_flight: AtomicU64,
    pub retries: AtomicU64,
    pub completion_tokens: AtomicU64,
}

/// Limits shared by every stage that uses one endpoint in this process.
struct Shared {
    slots: Arc<Semaphore>,
    /// When the next request may start, for `requests_per_minute`.
    next_start: tokio::sync::Mutex<Instant>,
    checked: tokio::sync::OnceCell<()>,
}

fn shared(endpoint: &Endpoint, base_url: &str) -> Arc<Shared> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Shared>>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    all.entry(format!("{}\0{base_url}\0{}", endpoint.name, endpoint.model))
        .or_insert_with(|| {
            Arc::new(Shared {
                slots: Arc::new(Semaphore::new(endpoint.max_concurrency)),
                next_start: tokio::sync::Mutex::new(Instant::now()),
                checked: tokio::sync::OnceCell::new(),
            })
        })
        .clone()
}

/// A client for one endpoint, inside one stage.
#[derive(Clone)]
pub struct Client {
    endpoint: Arc<Endpoint>,
    /// What decides the text besides the request: the model id, or the GGUF's hash.
    identity: Arc<String>,
    http: reqwest::Client,
    memo: Memo,
    /// Resolved lazily: a local server starts only when a request is not in the memo.
    base_url: Arc<tokio::sync::OnceCell<(String, Arc<Shared>)>>,
    pub stats: Arc<Stats>,
    seed: u64,
}

/// Why a single attempt failed.
enum Attempt {
    /// Worth another try (429, 5xx, timeout, lost connection), after at least this long.
    Retry(String, Option<Duration>),
    /// Not worth another try: the request itself is wrong, or the server refuses it.
    Fatal(OpError),
}

impl Client {
    /// A client for endpoint `name` of the pipeline's `llms:` block.
    pub fn new(cx: &StageCx, name: &str) -> Result<Client, OpError> {
        let endpoint = Endpoint::resolve(cx.section(super::SECTION), name, &cx.pipeline_dir)
            .map_err(|e| OpError::environment(e.into_iter().map(|e| e.message).collect::<Vec<_>>().join("; ")))?;
        let identity = identity(&endpoint, &cx.memo)?;
        let http = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(endpoint.max_concurrency)
            .build()
            .map_err(|e| OpError::environment(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            endpoint: Arc::new(endpoint),
            identity: Arc::new(identity),
            http,
            memo: cx.memo.clone(),
            base_url: Default::default(),
            stats: Default::default(),
            seed: cx.seed,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The seed for a request whose prompt is `prompt`, the `occurrence`-th time that prompt
    /// appears in the stage, when the params do not fix one.
    pub fn row_seed(&self, prompt: &str, occurrence: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"drover llm row seed v1\0");
        h.update(&self.seed.to_le_bytes());
        h.update(&occurrence.to_le_bytes());
        h.update(prompt.as_bytes());
        let bytes = h.finalize();
        // llama.cpp takes seeds as unsigned 32-bit values.
        u32::from_le_bytes(bytes.as_bytes()[..4].try_into().expect("4 bytes")) as u64
    }

    /// Gives every request without a seed one derived from its prompt and how many times that
    /// prompt came before, not from its row number: adding rows does not change the others'
    /// requests.
    pub fn seed_by_prompt(&self, requests: &mut [Request]) {
        let mut seen = HashMap::<String, u64>::new();
        for request in requests.iter_mut().filter(|r| r.sampling.seed.is_none()) {
            let key = match &request.prompt {
                Prompt::Text(text) => text.clone(),
                chat => format!("{chat:?}"),
            };
            let occurrence = seen.entry(key.clone()).or_default();
            request.sampling.seed = Some(self.row_seed(&key, *occurrence));
            *occurrence += 1;
        }
    }

    /// The memo key of `request`: the model identity and the request's `Body`
    /// ([`hash::memo_key`]).
    pub fn key(&self, request: &Request) -> String {
        hash::memo_key(MEMO_FORMAT, &self.identity, &Body::of(request))
    }

    /// The response already received for `request`, if any.
    pub fn cached(&self, request: &Request) -> Option<Completion> {
        self.cached_at(&self.key(request))
    }

    /// The response kept under memo key `key`, if any.
    pub(crate) fn cached_at(&self, key: &str) -> Option<Completion> {
        serde_json::from_slice(&self.memo.get(key)?).ok()
    }

    /// The response to `request`: from the memo, or from the server (then kept in the memo).
    pub async fn complete(&self, request: &Request) -> Result<Completion, OpError> {
        let key = self.key(request);
        if let Some(bytes) = self.memo.get(&key)
            && let Ok(done) = serde_json::from_slice::<Completion>(&bytes)
        {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(done);
        }
        self.fetch(request, &key).await
    }

    /// Sends `request` (whose memo key is `key`, not in the memo) and keeps the response.
    pub(crate) async fn fetch(&self, request: &Request, key: &str) -> Result<Completion, OpError> {
        let (base_url, shared) = self.connect().await?;
        let chat = matches!(request.prompt, Prompt::Chat(_));
        let url = format!("{base_url}/{}", if chat { "chat/completions" } else { "completions" });
        let body = serde_json::to_string(&Sent { body: Body::of(request), model: &self.endpoint.model })
            .expect("a request serialises");
        let mut attempt = 0u32;
        let completion = loop {
            let permit = shared.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            self.pace(&shared).await;
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            let result = self.send(&url, &body, chat).await;
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            match result {
                Ok(c) => break c,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why, after)) => {
                    if attempt >= self.endpoint.max_retries {
                        return Err(OpError::environment(format!(
                            "llm `{}`: gave up after {} attempts: {why}",
                            self.endpoint.name,
                            attempt + 1
                        )));
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, after, key)).await;
                    attempt += 1;
                }
            }
        };
        self.stats.completion_tokens.fetch_add(completion.completion_tokens, Ordering::Relaxed);
        let bytes = serde_json::to_vec(&completion).expect("a completion serialises");
        self.memo.put(key, &bytes).map_err(|e| OpError::environment(format!("cannot keep a response: {e}")))?;
        Ok(completion)
    }

    /// Waits for the request rate, when the endpoint has one.
    async fn pace(&self, shared: &Shared) {
        let Some(rpm) = self.endpoint.requests_per_minute else { return };
        let gap = Duration::from_secs_f64(60.0 / rpm as f64);
        let start = {
            let mut next = shared.next_start.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + gap;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// The base URL, after starting the local server or checking the remote one once.
    async fn connect(&self) -> Result<(String, Arc<Shared>), OpError> {
        let endpoint = self.endpoint.clone();
        let http = self.http.clone();
        let got = self
            .base_url
            .get_or_try_init(|| async move {
                let base_url = match &endpoint.target {
                    Target::Remote { base_url } => base_url.clone(),
                    Target::Serve { gguf, threads, context, mmproj } => {
                        let mmproj = mmproj.as_deref();
                        serve::ensure(gguf, mmproj, *threads, *context, endpoint.max_concurrency, &endpoint.model)
                            .await
                            .map_err(|e| OpError::environment(format!("llm `{}`: {e}", endpoint.name)))?
                            .base_url
                            .clone()
                    }
                };
                let shared = shared(&endpoint, &base_url);
                shared.checked.get_or_try_init(|| check_model(&http, &endpoint, &base_url)).await?;
                Ok::<_, OpError>((base_url, shared))
            })
            .await?;
        Ok(got.clone())
    }

    async fn send(&self, url: &str, body: &str, chat: bool) -> Result<Completion, Attempt> {
        let post = self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        let request = authorize(&self.endpoint, post).map_err(Attempt::Fatal)?;
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(Attempt::Retry(format!("no answer within {:?}", self.endpoint.timeout), None));
            }
            Err(e) => return Err(Attempt::Retry(format!("request failed: {}", error_chain(&e)), None)),
        };
        let status = response.status();
        let retry_after =
            response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Err(Attempt::Retry(format!("response cut off: {}", error_chain(&e)), None)),
        };
        if status.is_server_error() && text.contains(NO_IMAGES) {
            // Not worth a retry: llama.cpp answers so when it was started without a projector.
            return Err(Attempt::Fatal(OpError::failed(format!(
                "llm `{}` does not accept images: HTTP {status}: {}; {}",
                self.endpoint.name,
                snippet(&text),
                no_images_hint(&self.endpoint)
            ))));
        }
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            return Err(Attempt::Retry(format!("HTTP {status}: {}", snippet(&text)), retry_after));
        }
        if !status.is_success() {
            let err = match status.as_u16() {
                401 | 403 => OpError::environment(format!(
                    "llm `{}`: HTTP {status}: {} (is {} set to a valid key?)",
                    self.endpoint.name,
                    snippet(&text),
                    self.endpoint.api_key_env.as_deref().unwrap_or("an API key variable (`api_key_env`)")
                )),
                404 => OpError::environment(format!(
                    "llm `{}`: HTTP 404 from {url}: {} (is the model id `{}` right, and does the server speak the \
                     OpenAI API under this base_url?)",
                    self.endpoint.name,
                    snippet(&text),
                    self.endpoint.model
                )),
                _ => OpError::failed(format!(
                    "llm `{}`: the server refused a request: HTTP {status}: {}",
                    self.endpoint.name,
                    snippet(&text)
                )),
            };
            return Err(Attempt::Fatal(err));
        }
        parse_completion(&text, chat).map_err(|e| {
            // A 200 whose body is not a completion: a proxy's error page or a cut stream.
            Attempt::Retry(format!("unreadable response ({e}): {}", snippet(&text)), None)
        })
    }
}

/// What llama.cpp's server says to an image when it has no projector (`--mmproj`).
const NO_IMAGES: &str = "image input is not supported";

/// What to change when an endpoint refuses images.
fn no_images_hint(endpoint: &Endpoint) -> String {
    match endpoint.target {
        Target::Serve { .. } => format!(
            "give the endpoint the vision model's projector: `llms.{}.serve.mmproj: PATH` (the mmproj .gguf \
             published beside the model's GGUF)",
            endpoint.name
        ),
        Target::Remote { .. } => format!(
            "point `llms.{}` at a vision model (a llama.cpp server started with `--mmproj`, vLLM or Ollama serving \
             a VLM)",
            endpoint.name
        ),
    }
}

fn authorize(endpoint: &Endpoint, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, OpError> {
    let Some(var) = &endpoint.api_key_env else { return Ok(request) };
    match std::env::var(var) {
        Ok(key) if !key.is_empty() => Ok(request.bearer_auth(key)),
        _ => Err(OpError::environment(format!(
            "llm `{}` reads its API key from ${var}, which is not set",
            endpoint.name
        ))),
    }
}

/// Once per endpoint and process: can the server be reached, and does it serve the model?
async fn check_model(http: &reqwest::Client, endpoint: &Endpoint, base_url: &str) -> Result<(), OpError> {
    let url = format!("{base_url}/models");
    let request = authorize(endpoint, http.get(&url).timeout(Duration::from_secs(30)))?;
    let hint = format!(
        "start the server, or point the endpoint elsewhere: `--set llms.{}.base_url=URL` (or DROVER_LLM_{})",
        endpoint.name,
        endpoint.name.to_uppercase()
    );
    let response = request.send().await.map_err(|e| {
        OpError::environment(format!(
            "llm `{}`: cannot reach the server at {base_url}: {}; {hint}",
            endpoint.name,
            error_chain(&e)
        ))
    })?;
    let status = response.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(OpError::environment(format!(
            "llm `{}`: {base_url} refused the API key (HTTP {status})",
            endpoint.name
        )));
    }
    if !status.is_success() || matches!(endpoint.target, Target::Serve { .. }) {
        return Ok(()); // Not every server lists its models; a local one serves its alias.
    }
    let Ok(list) = response.text().await.map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::Null)) else {
        return Ok(());
    };
    let ids: Vec<&str> = list["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    if !ids.is_empty() && !ids.contains(&endpoint.model.as_str()) {
        return Err(OpError::environment(format!(
            "llm `{}`: the server at {base_url} does not serve model `{}`; it serves: {}",
            endpoint.name,
            endpoint.model,
            ids.join(", ")
        )));
    }
    Ok(())
}

/// Parses an OpenAI chat or text completion into a [`Completion`].
fn parse_completion(text: &str, chat: bool) -> Result<Completion, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let choices = v["choices"].as_array().ok_or("no `choices`")?;
    let mut out = Vec::with_capacity(choices.len());
    for c in choices {
        let text = match chat {
            true => c["message"]["content"].as_str(),
            false => c["text"].as_str(),
        };
        let text = text.ok_or("a choice without text")?.to_string();
        let logprobs = c.get("logprobs").filter(|l| !l.is_null()).cloned();
        out.push(Choice { text, finish_reason: c["finish_reason"].as_str().unwrap_or("").to_string(), logprobs });
    }
    Ok(Completion {
        choices: out,
        model: v["model"].as_str().unwrap_or("").to_string(),
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// A `Retry-After` value: seconds, or an HTTP date (capped at 10 minutes).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(600)))
}

/// Exponential backoff with full jitter: up to 0.5 s × 2^attempt (at most 60 s), and never
/// less than the server's `Retry-After`. The jitter comes from the request key and attempt.
fn backoff(attempt: u32, retry_after: Option<Duration>, key: &str) -> Duration {
    let cap = (0.5 * 2f64.powi(attempt.min(7) as i32)).min(60.0);
    let h = blake3::hash(format!("{key}{attempt}").as_bytes());
    let unit = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    let jittered = Duration::from_secs_f64(cap * (0.5 + 0.5 * unit));
    retry_after.map_or(jittered, |r| r.max(jittered.min(Duration::from_millis(100))))
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// What decides a request's text besides the request: the model id, or the content of the GGUF
/// file a local server loads and its context length. The GGUF is hashed through the store's
/// stat cache, which the stage's key went through first: once per process, and not at all
/// while the file is unchanged since an earlier run.
fn identity(endpoint: &Endpoint, memo: &Memo) -> Result<String, OpError> {
    Ok(match &endpoint.target {
        Target::Remote { .. } => format!("model {}", endpoint.model),
        Target::Serve { gguf, context, mmproj, .. } => {
            let hash = memo.hash_source_file(gguf).map_err(|e| OpError::environment(e.to_string()))?;
            match mmproj {
                // Without a projector, as it always was: existing memos keep answering.
                None => format!("gguf {hash} context {context}"),
                Some(mmproj) => {
                    let projector = memo.hash_source_file(mmproj).map_err(|e| OpError::environment(e.to_string()))?;
                    format!("gguf {hash} context {context} mmproj {projector}")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A client whose model identity is `identity`, for computing keys (it sends nothing).
    fn client(identity: &str, memo_dir: &std::path::Path) -> Client {
        let llms = json!({"default": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}});
        let endpoint = Endpoint::resolve(&llms, "default", memo_dir).unwrap();
        Client {
            endpoint: Arc::new(endpoint),
            identity: Arc::new(identity.to_string()),
            http: reqwest::Client::new(),
            memo: Memo::new(memo_dir),
            base_url: Default::default(),
            stats: Default::default(),
            seed: 0,
        }
    }

    /// Memo keys are a promise: a memo filled by an earlier drover answers the same requests.
    /// The expected keys were computed independently: the bytes written out by hand below,
    /// `b"drover llm response v1\0" + identity + b"\0" + body`, hashed with PyPI's `blake3`
    /// package. Every sampling param is set in the chat request, so a field that moves, is
    /// renamed or changes its encoding fails here.
    #[test]
    fn memo_keys_are_pinned() {
        let d = tempfile::tempdir().unwrap();
        let chat = Request {
            prompt: Prompt::Chat(vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Name a \"colour\".\nOne word, \u{e9}."),
            ]),
            sampling: Sampling {
                temperature: Some(0.7),
                top_p: Some(1.0),
                max_tokens: Some(16),
                stop: Some(vec!["\n\n".into()]),
                seed: Some(42),
                logit_bias: Some(BTreeMap::from([("hello".into(), 2.5), ("15339".into(), -100.0)])),
                n: Some(2),
                logprobs: Some(3),
                presence_penalty: Some(0.0),
                frequency_penalty: Some(-0.5),
            },
        };
        let text = Request {
            prompt: Prompt::Text("Once upon".into()),
            sampling: Sampling { max_tokens: Some(8), logprobs: Some(2), ..Default::default() },
        };
        let bare = Request { prompt: Prompt::Chat(vec![Message::new("user", "hi")]), sampling: Sampling::default() };
        let remote = client("model m", d.path());
        let served = client(&format!("gguf {} context 2048", "ab".repeat(32)), d.path());
        assert_eq!(remote.key(&chat), "3f3e56047280763a57fbfbb239d8d7513103223752913225bf9b0d6b4803f9cd");
        assert_eq!(remote.key(&text), "96549e22fc0ea9a2009dbefc95b949b0f1c170318a073d67d6e5fab0167aad7f");
        assert_eq!(served.key(&bare), "fb2da51a1feb0df5a10fc03540279127675f6acaed7fa54e9af2ee5e01021512");
    }

    /// The stage's key hashes a `serve:` endpoint's GGUF through the store's stat cache (as a
    /// named dep), which the memo shares (tested in drover-cache); the client's model identity
    /// must reuse that hash, not read the file again. The file changes between the two: a
    /// second read would see the new bytes.
    #[test]
    fn a_gguf_is_hashed_once_per_process_through_the_stores_stat_cache() {
        let d = tempfile::tempdir().unwrap();
        let memo = Memo::new(&d.path().join(".drover"));
        let gguf = d.path().join("m.gguf");
        std::fs::write(&gguf, "GGUF v1").unwrap();
        let keyed = memo.hash_source_file(&gguf).unwrap();
        // blake3(b"GGUF v1"), by PyPI's `blake3` package.
        assert_eq!(keyed.as_str(), "b001951ba80abb8ccdef9d5738d4a8d84455d2a88eef6092d1ac2f007acf899e");
        std::fs::write(&gguf, "GGUF v2, edited while the run is under way").unwrap();
        let llms = json!({"default": {"serve": {"gguf": "m.gguf", "context": 512}}});
        let endpoint = Endpoint::resolve(&llms, "default", d.path()).unwrap();
        assert_eq!(identity(&endpoint, &memo).unwrap(), format!("gguf {keyed} context 512"));
    }

    /// Image parts: a text message still serialises (and debug-prints, which row seeds are
    /// derived from) as before parts existed; a message of parts as OpenAI's vision API takes it.
    #[test]
    fn text_content_is_unchanged_and_parts_are_openais() {
        let text = vec![Message::new("user", "hi")];
        assert_eq!(serde_json::to_string(&text).unwrap(), r#"[{"role":"user","content":"hi"}]"#);
        assert_eq!(format!("{:?}", Prompt::Chat(text)), r#"Chat([Message { role: "user", content: "hi" }])"#);
        let parts = vec![Message::parts(
            "user",
            vec![Part::image("image/png", b"\x89PNG"), Part::Text { text: "Describe.".into() }],
        )];
        assert_eq!(
            serde_json::to_string(&parts).unwrap(),
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw=="}},{"type":"text","text":"Describe."}]}]"#
        );
        let d = tempfile::tempdir().unwrap();
        let c = client("model m", d.path());
        let ask = |bytes: &[u8]| Request {
            prompt: Prompt::Chat(vec![Message::parts("user", vec![Part::image("image/png", bytes)])]),
            sampling: Sampling::default(),
        };
        assert_ne!(c.key(&ask(b"red")), c.key(&ask(b"blue")), "the image's bytes enter the memo key");
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let key = "k";
        assert!(backoff(0, None, key) <= Duration::from_millis(500));
        assert!(backoff(0, None, key) >= Duration::from_millis(250));
        assert!(backoff(5, None, key) >= Duration::from_secs(8));
        assert!(backoff(30, None, key) <= Duration::from_secs(60));
        assert_eq!(backoff(0, Some(Duration::from_secs(3)), key), Duration::from_secs(3));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "a date in the past");
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(retry_after(&later), Some(Duration::from_secs(600)), "capped");
    }

    #[test]
    fn completions_of_both_apis_parse() {
        let chat = r#"{"model":"m","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
                      "usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        let c = parse_completion(chat, true).unwrap();
        assert_eq!((c.text(), c.finish_reason(), c.prompt_tokens, c.completion_tokens), ("hi", "stop", 5, 1));
        let text = r#"{"model":"m","choices":[{"text":" there","finish_reason":"length","logprobs":null}]}"#;
        let c = parse_completion(text, false).unwrap();
        assert_eq!((c.text(), c.finish_reason(), c.choices[0].logprobs.is_none()), (" there", "length", true));
        assert!(parse_completion("<html>bad gateway</html>", true).is_err());
        assert!(parse_completion(r#"{"error":"x"}"#, true).is_err());
    }
}
