//! The in-memory API server (kube-fake-client) served over HTTP on 127.0.0.1, so that the
//! operator can run as its own process and its memory be measured alone.
//!
//! kube-fake-client answers a watch with a plain list, which would leave a `Controller`
//! blind after its first list. So every successful write is also published as a watch
//! event to the open watches of its collection. Writes that change nothing but the
//! resourceVersion are not published: the fake bumps it even for an identical apply, and
//! the operator's `owns()` watches would otherwise feed every reconcile back into the next.
//! A watch opened between a list and a write may miss that write; a watch that falls behind
//! is closed, and the watcher lists again.
//!
//! With `TRACE_WRITES` set in the environment, every successful write is printed to
//! stderr: the quickest way to see what an operator that does not settle keeps writing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body as AxumBody;
use axum::http::{Method, Request, Response, StatusCode};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::broadcast;

/// A collection: the API prefix (`/api/v1` or `/apis/GROUP/VERSION`) and the plural name.
type Collection = (String, String);

/// One published change.
#[derive(Clone)]
struct Change {
    collection: Collection,
    namespace: Option<String>,
    line: Arc<Vec<u8>>,
}

/// The server's shared state.
pub struct ApiServer {
    client: kube::Client,
    watchers: broadcast::Sender<Change>,
    /// The last published form of each object, to drop writes that change nothing.
    last: Mutex<HashMap<String, Value>>,
    /// Requests so far, reads and writes (a watch counts once, when opened).
    requests: AtomicU64,
    /// Successful writes so far.
    writes: AtomicU64,
    /// Writes that changed an object (published to watches) so far.
    changes: AtomicU64,
}

/// A request path split into its parts.
struct Path {
    collection: Collection,
    namespace: Option<String>,
}

fn parse(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let plural = rest.first()?;
    Some(Path {
        collection: (prefix, (*plural).to_owned()),
        namespace,
    })
}

/// The object without what every write changes.
fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        meta.remove("generation");
    }
    object
}

impl ApiServer {
    /// Serves `client` (a kube-fake-client) with watch events.
    pub fn new(client: kube::Client) -> Arc<Self> {
        let (watchers, _) = broadcast::channel(1 << 16);
        Arc::new(Self {
            client,
            watchers,
            last: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        })
    }

    /// Requests so far, reads and writes; a watch counts once, when it is opened.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Successful writes so far, changing anything or not (a periodic reconcile applies
    /// its children again).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes that changed an object: an operator that has settled makes none.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Serves HTTP on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().fallback(move |request: Request<AxumBody>| {
            let server = Arc::clone(&self);
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake API server stopped: {e}");
        }
    }

    async fn handle(&self, request: Request<AxumBody>) -> Response<AxumBody> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let watch = request.method() == Method::GET
            && request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let path = parse(request.uri().path());
        if watch {
            return match path {
                Some(path) => self.watch(path),
                None => status(StatusCode::NOT_FOUND),
            };
        }
        let method = request.method().clone();
        let path_text = request.uri().to_string();
        let (mut parts, body) = request.into_parts();
        let page = if method == Method::GET {
            split_page(&parts.uri).map(|(uri, page)| {
                parts.uri = uri;
                page
            })
        } else {
            None
        };
        let Ok(body) = body.collect().await.map(|b| b.to_bytes().to_vec()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let forwarded = Request::from_parts(parts, kube::client::Body::from(body));
        let response = match self.client.send(forwarded).await {
            Ok(response) => response,
            Err(e) => {
                eprintln!("fake API server: {e}");
                return status(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        let (parts, body) = response.into_parts();
        let mut body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        if let Some(page) = page
            && parts.status.is_success()
        {
            body = cut(body, &page);
        }
        if parts.status.is_success()
            && method != Method::GET
            && let Some(path) = path
        {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if std::env::var_os("TRACE_WRITES").is_some() {
                eprintln!("{method} {path_text}");
            }
            self.publish(&method, path, &body);
        }
        let mut parts = parts;
        // The body may have been cut to a page: its length is the new body's.
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        Response::from_parts(parts, AxumBody::from(body))
    }

    fn publish(&self, method: &Method, path: Path, body: &[u8]) {
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        // A delete of a collection, or a Status reply, is no object to publish.
        if object.get("metadata").and_then(|m| m.get("name")).is_none()
            || object.get("kind").and_then(Value::as_str) == Some("Status")
        {
            return;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .map(str::to_owned)
            .or(path.namespace);
        let key = format!(
            "{}/{}/{}/{name}",
            path.collection.0,
            path.collection.1,
            namespace.as_deref().unwrap_or("")
        );
        let kind = if *method == Method::DELETE {
            if let Ok(mut last) = self.last.lock() {
                last.remove(&key);
            }
            "DELETED"
        } else {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            let now = comparable(&object);
            match last.insert(key, now.clone()) {
                Some(before) if before == now => return,
                Some(_) => "MODIFIED",
                None => "ADDED",
            }
        };
        let mut line = serde_json::to_vec(&serde_json::json!({"type": kind, "object": object}))
            .unwrap_or_default();
        line.push(b'\n');
        self.changes.fetch_add(1, Ordering::Relaxed);
        // No open watch is not an error.
        let _ = self.watchers.send(Change {
            collection: path.collection,
            namespace,
            line: Arc::new(line),
        });
    }

    fn watch(&self, path: Path) -> Response<AxumBody> {
        let receiver = self.watchers.subscribe();
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            // Lagged or closed: end the watch, and the watcher lists again.
            let change = receiver.recv().await.ok()?;
            Some((change, receiver))
        })
        .filter_map(move |change| {
            let wanted = change.collection == path.collection
                && (path.namespace.is_none() || path.namespace == change.namespace);
            async move { wanted.then(|| Ok::<_, Infallible>(change.line.as_ref().clone())) }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(AxumBody::from_stream(stream))
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
    }
}

/// A list request's page: `limit` and `continue` (an offset, in this server).
struct Page {
    limit: usize,
    offset: usize,
}

/// The URI without `limit` and `continue`, and the page they asked for. kube-fake-client
/// cuts a list at the limit but gives no `continue` token, so a paged list (the watcher
/// asks for 500 at a time) would silently miss the rest; pages are cut here instead.
fn split_page(uri: &axum::http::Uri) -> Option<(axum::http::Uri, Page)> {
    let query = uri.query()?;
    let mut page = Page {
        limit: 0,
        offset: 0,
    };
    let mut kept = Vec::new();
    for p in query.split('&') {
        if let Some(v) = p.strip_prefix("limit=") {
            page.limit = v.parse().ok()?;
        } else if let Some(v) = p.strip_prefix("continue=") {
            page.offset = if v.is_empty() { 0 } else { v.parse().ok()? };
        } else {
            kept.push(p);
        }
    }
    if page.limit == 0 {
        return None;
    }
    let uri = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    Some((uri.parse().ok()?, page))
}

/// The page of a whole list, with a `continue` token when more follow.
fn cut(body: Vec<u8>, page: &Page) -> Vec<u8> {
    let Ok(mut list) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) else {
        return body;
    };
    let total = items.len();
    let end = (page.offset + page.limit).min(total);
    let kept: Vec<Value> = items.drain(page.offset.min(total)..end).collect();
    *items = kept;
    if end < total {
        list["metadata"]["continue"] = Value::String(end.to_string());
    }
    serde_json::to_vec(&list).unwrap_or(body)
}

fn status(code: StatusCode) -> Response<AxumBody> {
    let mut response = Response::new(AxumBody::empty());
    *response.status_mut() = code;
    response
}
