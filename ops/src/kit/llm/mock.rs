//! A test double of a language-model server, for op tests: [`MockLlm`] answers OpenAI-style
//! completion requests with scripted text. It exists to check what an op does with known
//! responses (parsing, filters, stopping rules), which a real model cannot be made to give; the
//! ops run against a real llama.cpp server in tests/llm.rs.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// A mock language model: an OpenAI-style completion server on a local port that answers each
/// request with the scripted `answer(body)`, and keeps the bodies it was sent.
pub(crate) struct MockLlm {
    url: String,
    pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
}

impl MockLlm {
    pub(crate) fn start(answer: impl Fn(&Value) -> String + Send + 'static) -> MockLlm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
        let url = format!("http://{}/v1", listener.local_addr().expect("an address"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().expect("a stream"));
                let (mut first, mut length) = (String::new(), 0);
                reader.read_line(&mut first).expect("a request line");
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).expect("a header");
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(n) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = n.trim().parse().expect("a length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("a body");
                let reply = if first.contains("/models") {
                    json!({"data": [{"id": "m"}]})
                } else {
                    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
                    let text = answer(&body);
                    kept.lock().unwrap().push(body);
                    // `text` for a plain completion, `message` for a chat.
                    json!({"model": "m", "choices": [{"text": text, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
                }
                .to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        MockLlm { url, bodies }
    }

    /// The pipeline's `llms:` block with this server as `default`.
    pub(crate) fn llms(&self) -> Value {
        json!({"default": {"base_url": self.url, "model": "m", "max_concurrency": 2}})
    }

    /// How many completion requests it was sent.
    pub(crate) fn sent(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

/// An endpoint for plan-time checks (nothing is sent).
pub(crate) fn nowhere() -> Value {
    json!({"default": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}})
}
