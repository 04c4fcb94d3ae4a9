//! Which routes the proxy serves, and which `model` a request names.

use std::borrow::Cow;

use hyper::Method;

/// What the proxy does with a request, decided from its method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz` (and llama-server's `/health`, `/v1/health`): the
    /// proxy itself is up. No API key needed.
    Health,
    /// `GET /v1/models`: every model and alias with its state.
    ListModels,
    /// `GET /v1/models/{id}`.
    GetModel(String),
    /// An inference route: routed by the `model` of the JSON body (or form).
    ByBody,
    /// A llama.cpp GET/DELETE route: routed by the `?model=` query parameter.
    ByQuery,
    /// `/upstream/{model}/{rest}`: any request, passed to that model's
    /// instance as `/{rest}`.
    Upstream {
        id: String,
        rest: String,
    },
    /// A known path with another method.
    WrongMethod(&'static str),
    NotFound,
}

/// Routes of the pinned llama-server (b11434, `tools/server/server.cpp`)
/// whose request body names the model.
const BODY_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/completions",
    "/completion",
    "/v1/responses",
    "/responses",
    "/v1/embeddings",
    "/embeddings",
    "/embedding",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/infill",
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/chat/completions/input_tokens",
    "/chat/completions/input_tokens",
    "/v1/responses/input_tokens",
    "/responses/input_tokens",
    "/v1/chat/completions/control",
    "/v1/audio/transcriptions",
    "/audio/transcriptions",
    "/v1/streams/lookup",
    "/v1/systemone",
    "/props",
    "/lora-adapters",
];

/// GET (and DELETE) routes of llama-server, routed by `?model=` like its own
/// router mode does.
const QUERY_ROUTES: &[&str] = &[
    "/props",
    "/slots",
    "/metrics",
    "/lora-adapters",
    "/v1/stream",
];

pub fn classify(method: &Method, path: &str) -> Route {
    if let Some(rest) = path.strip_prefix("/upstream/") {
        let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
        return Route::Upstream {
            id: percent_decode(id).into_owned(),
            rest: rest.to_owned(),
        };
    }
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" | "/health" | "/v1/health" => {
            return if get {
                Route::Health
            } else {
                Route::WrongMethod("GET")
            };
        }
        "/v1/models" | "/models" => {
            return if get {
                Route::ListModels
            } else {
                Route::WrongMethod("GET")
            };
        }
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/v1/models/") {
        return if get {
            Route::GetModel(percent_decode(id).into_owned())
        } else {
            Route::WrongMethod("GET")
        };
    }
    let is_body = BODY_ROUTES.contains(&path) || path.starts_with("/slots/");
    let is_query = QUERY_ROUTES.contains(&path);
    if method == Method::POST && is_body {
        Route::ByBody
    } else if (get || method == Method::DELETE) && is_query {
        Route::ByQuery
    } else if is_body {
        Route::WrongMethod("POST")
    } else if is_query {
        Route::WrongMethod("GET")
    } else {
        Route::NotFound
    }
}

/// Why a body's `model` could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct BadBody(pub String);

#[derive(serde::Deserialize)]
struct ModelField<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// What the proxy reads from a request body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyInfo<'a> {
    /// The `model` it names, if any.
    pub model: Option<Cow<'a, str>>,
    /// `"stream": true`: the response will be server-sent events.
    pub stream: bool,
}

/// Whether a route takes a `multipart/form-data` body (an audio upload)
/// instead of JSON.
pub fn takes_form(path: &str) -> bool {
    path.ends_with("/audio/transcriptions")
}

/// Whether a `Content-Type` is `multipart/form-data`.
pub fn is_multipart(content_type: &str) -> bool {
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
}

/// The `model` of a request body: JSON (the usual case) or a multipart form
/// (`/v1/audio/transcriptions`), and whether it asks for a stream.
pub fn body_info<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<BodyInfo<'a>, BadBody> {
    if let Some(ct) = content_type
        && is_multipart(ct)
    {
        let model = multipart_model(ct, body);
        let stream = multipart_field(ct, body, "stream").is_some_and(|v| v.trim() == "true");
        return Ok(BodyInfo {
            model: model.map(Cow::Owned),
            stream,
        });
    }
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(BodyInfo::default());
    };
    if *first != b'{' {
        return Err(match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => BadBody(format!(
                "the request body must be a JSON object, not {}",
                json_kind(&v)
            )),
            Err(e) => BadBody(format!("the request body is not valid JSON: {e}")),
        });
    }
    match serde_json::from_slice::<ModelField<'a>>(body) {
        Ok(f) => Ok(BodyInfo {
            model: f.model,
            stream: f.stream.is_some_and(|v| v == serde_json::Value::Bool(true)),
        }),
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(BadBody(format!(
            "\"model\" must be a string naming a model: {e}"
        ))),
        Err(e) => Err(BadBody(format!("the request body is not valid JSON: {e}"))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The `model` field of a `multipart/form-data` body.
fn multipart_model(content_type: &str, body: &[u8]) -> Option<String> {
    multipart_field(content_type, body, "model")
}

/// A field of a `multipart/form-data` body.
fn multipart_field(content_type: &str, body: &[u8], field: &str) -> Option<String> {
    let boundary = content_type.split(';').find_map(|p| {
        let p = p.trim();
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_owned())
    })?;
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    for part in text.split(delimiter.as_str()) {
        let Some((headers, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let names_model = headers.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-disposition:")
                && (l.contains(&format!("name=\"{field}\""))
                    || l.contains(&format!("name={field};"))
                    || l.ends_with(&format!("name={field}")))
        });
        if names_model {
            return Some(value.strip_suffix("\r\n").unwrap_or(value).to_owned());
        }
    }
    None
}

/// The `model` parameter of a query string.
pub fn query_model(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == "model").then(|| percent_decode(&v.replace('+', " ")).into_owned())
    })
}

/// `%XX` decoding; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn classifies_routes() {
        assert_eq!(
            classify(&Method::POST, "/v1/chat/completions"),
            Route::ByBody
        );
        assert_eq!(classify(&Method::POST, "/slots/0"), Route::ByBody);
        assert_eq!(
            classify(&Method::GET, "/v1/chat/completions"),
            Route::WrongMethod("POST")
        );
        assert_eq!(classify(&Method::GET, "/slots"), Route::ByQuery);
        assert_eq!(classify(&Method::GET, "/props"), Route::ByQuery);
        assert_eq!(classify(&Method::POST, "/props"), Route::ByBody);
        assert_eq!(classify(&Method::GET, "/v1/models"), Route::ListModels);
        assert_eq!(
            classify(&Method::GET, "/v1/models/a%2Fb"),
            Route::GetModel("a/b".into())
        );
        assert_eq!(classify(&Method::GET, "/healthz"), Route::Health);
        assert_eq!(classify(&Method::GET, "/nope"), Route::NotFound);
        assert_eq!(
            classify(&Method::POST, "/upstream/qwen/v1/chat/completions"),
            Route::Upstream {
                id: "qwen".into(),
                rest: "v1/chat/completions".into()
            }
        );
        assert_eq!(
            classify(&Method::GET, "/upstream/qwen"),
            Route::Upstream {
                id: "qwen".into(),
                rest: String::new()
            }
        );
    }

    #[test]
    fn reads_the_model_of_json_bodies() {
        assert_eq!(
            body_info(None, br#"{"model":"a","messages":[]}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("a")
        );
        assert!(
            body_info(None, br#"{"model":"a","stream":true}"#)
                .unwrap()
                .stream
        );
        assert!(
            !body_info(None, br#"{"model":"a","stream":false}"#)
                .unwrap()
                .stream
        );
        assert_eq!(
            body_info(None, br#"{"messages":[{"model":"x"}]}"#)
                .unwrap()
                .model,
            None
        );
        assert_eq!(body_info(None, b"  ").unwrap(), BodyInfo::default());
        assert!(
            body_info(None, br#"{"model":"a""#)
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
        assert!(
            body_info(None, br#"[1]"#)
                .unwrap_err()
                .0
                .contains("an array")
        );
        assert!(
            body_info(None, br#"{"model":3}"#)
                .unwrap_err()
                .0
                .contains("must be a string")
        );
        assert_eq!(
            body_info(None, br#"{"model":"a\"b"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn reads_the_model_of_multipart_forms() {
        let body = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XYZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XYZ--\r\n";
        assert_eq!(
            body_info(Some("multipart/form-data; boundary=XYZ"), body)
                .unwrap()
                .model
                .as_deref(),
            Some("whisper")
        );
    }

    #[test]
    fn reads_the_query_model() {
        assert_eq!(
            query_model(Some("a=1&model=org%2Fm%3AQ4")),
            Some("org/m:Q4".into())
        );
        assert_eq!(query_model(Some("a=1")), None);
        assert_eq!(query_model(None), None);
        assert_eq!(percent_decode("100%"), "100%");
    }
}
