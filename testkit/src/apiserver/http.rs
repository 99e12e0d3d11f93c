//! The HTTP side: accepting connections, routing, and the request pipeline
//! (authentication, counting, faults, authorization, then the verb).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT, WARNING,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::{bearer, Auth, User, ANONYMOUS};
use super::discovery;
use super::faults::{FaultTarget, Faults};
use super::openapi::{self, FieldValidation, Payload};
use super::protobuf;
use super::resources::Resource;
use super::rest::{self, Target};
use super::selector::Selector;
use super::stats::Counter;
use super::status::ApiError;
use super::storage::Storage;
use super::table::{self, Include};
use super::watch::{self, WatchRequest};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest request body kube-apiserver takes.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// The watch timeout when the client gives none (kube-apiserver picks 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Everything a request needs, shared by all connections and kept across restarts.
pub(crate) struct State {
    pub storage: Arc<dyn Storage>,
    pub auth: Auth,
    pub faults: Arc<Faults>,
    pub counter: Arc<Counter>,
    pub addr: SocketAddr,
    pub bookmark_interval: Duration,
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections until `stop` fires, then drops every connection at once.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "test API server failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, state).await,
                        Some(tls) => {
                            // A client that fails its handshake is the client's problem.
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                            {
                                serve_connection(stream, state).await;
                            }
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection<I>(io: I, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, request).await) }
    });
    // A client that goes away mid-request is not the server's problem.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Where a request goes.
enum Route {
    Discovery(Value),
    Health,
    Resource {
        target: Target,
        verb: &'static str,
    },
    /// Under `/api` or `/apis` but nothing served there: a Status 404.
    NoSuchResource,
    /// Outside the API: a plain 404.
    NotFound,
}

fn route(method: &Method, path: &str, query: &HashMap<String, String>, addr: SocketAddr) -> Route {
    if matches!(path, "/healthz" | "/livez" | "/readyz") {
        return Route::Health;
    }
    if *method == Method::GET {
        if let Some(doc) = discovery::document(path, addr) {
            return Route::Discovery(doc);
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        ["api" | "apis", ..] => return Route::NoSuchResource,
        _ => return Route::NotFound,
    };
    // `/watch/...` is the deprecated spelling of `?watch=true`.
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        _ => return Route::NoSuchResource,
    };
    let Some(resource) = Resource::find(group, version, plural) else {
        return Route::NoSuchResource;
    };
    let watch =
        legacy_watch || matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET, true) if watch => "watch",
        (Method::GET, true) => "get",
        (Method::GET, false) if watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => "unsupported",
    };
    Route::Resource {
        target: Target {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            dry_run: query.contains_key("dryRun"),
            field_manager: query.get("fieldManager").cloned(),
            force: query.get("force").cloned(),
            user_agent: None,
        },
        verb,
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header(AUTHORIZATION);
    let accept = header(ACCEPT).unwrap_or_default();
    let content_type = header(CONTENT_TYPE).unwrap_or_default();
    // Objects and Status go back in protobuf to clients that prefer it (client-go's
    // kubectl), JSON to the others; tables, discovery and watches are always JSON.
    let proto = protobuf::preferred(&accept);
    let error = |e: ApiError| error_as(e, proto);
    let mut route = route(&method, &path, &query, state.addr);
    if let Route::Resource { target, .. } = &mut route {
        target.user_agent = header(USER_AGENT);
    }
    let verb = match &route {
        Route::Resource { verb, .. } => verb.to_string(),
        _ => method.as_str().to_lowercase(),
    };

    let user: Option<&User> = match state.auth.authenticate(authorization.as_deref()) {
        Ok(user) => user,
        Err(e) => {
            state.counter.record(&verb, &path, "");
            return error(e);
        }
    };
    let user_name = user.map_or(ANONYMOUS, User::name);
    state.counter.record(&verb, &path, user_name);

    let verdict = state.faults.on_request(&FaultTarget {
        user: user_name,
        token: bearer(authorization.as_deref()),
        verb: &verb,
        resource: match &route {
            Route::Resource { target, .. } => Some(target.resource.plural),
            _ => None,
        },
    });
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    if let Some(code) = verdict.fail {
        return error(ApiError::injected(code));
    }

    let (target, verb) = match route {
        Route::Health => return text(StatusCode::OK, "ok"),
        Route::NotFound => return text(StatusCode::NOT_FOUND, "404 page not found\n"),
        Route::NoSuchResource => return error(ApiError::no_such_path()),
        Route::Discovery(doc) => return json(StatusCode::OK, &doc),
        Route::Resource { target, verb } => (target, verb),
    };
    if !accepts_json(&accept) && !proto {
        return error(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, {} (got {accept:?})",
                protobuf::MEDIA_TYPE
            ),
        ));
    }
    let validation = match FieldValidation::parse(query.get("fieldValidation").map(String::as_str))
    {
        Ok(validation) => validation,
        Err(e) => return error(e),
    };
    let mut warnings = Vec::new();
    let selector = |key: &str, parse: fn(&str) -> Result<Selector, ApiError>| {
        parse(query.get(key).map_or("", String::as_str))
    };
    let (fields, labels) = match (
        selector("fieldSelector", Selector::fields),
        selector("labelSelector", Selector::labels),
    ) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), _) | (_, Err(e)) => return error(e),
    };
    let fields = match fields.with_shards(query.get("shardSelector").map_or("", String::as_str)) {
        Ok(fields) => fields,
        Err(e) => return error(e),
    };
    // RBAC sees a list or watch pinned to one name as a request for that object.
    let auth_name = target
        .name
        .as_deref()
        .or(if matches!(verb, "list" | "watch") {
            fields.name()
        } else {
            None
        });
    if let Err(e) = state.auth.authorize(
        user,
        verb,
        target.resource,
        target.namespace.as_deref(),
        auth_name,
    ) {
        return error(e);
    }

    let storage = state.storage.as_ref();
    let table = accept.contains("as=Table");
    let result = match verb {
        "get" => rest::get(storage, &target).await.map(|obj| {
            if table {
                let include = Include::parse(query.get("includeObject").map(String::as_str));
                let rv = super::storage::rv_of(&obj);
                (
                    StatusCode::OK,
                    table::render_with(target.resource, &[obj], rv, true, include),
                )
            } else {
                (StatusCode::OK, obj)
            }
        }),
        "list" => rest::list(storage, &target, &fields, &labels)
            .await
            .map(|list| {
                if table {
                    let include = Include::parse(query.get("includeObject").map(String::as_str));
                    let rv = super::storage::rv_of(&list);
                    let items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
                    (
                        StatusCode::OK,
                        table::render_with(target.resource, &items, rv, true, include),
                    )
                } else {
                    (StatusCode::OK, list)
                }
            }),
        "watch" => {
            let request = match watch_request(&target, fields, labels, &query, table, state) {
                Ok(request) => request,
                Err(e) => return error(e),
            };
            return match watch::start(state.storage.clone(), request).await {
                Ok(lines) => streaming(lines),
                Err(e) => error(e),
            };
        }
        "create" | "update" | "patch" | "delete" => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return error(ApiError::new(
                        413,
                        "RequestEntityTooLarge",
                        format!("the request body could not be read: {e}"),
                    ))
                }
            };
            write(storage, &target, verb, &content_type, body, validation)
                .await
                .map(|(code, obj, mut found)| {
                    warnings.append(&mut found);
                    (code, obj)
                })
        }
        _ => Err(ApiError::method_not_allowed()),
    };
    let mut response = match result {
        Ok((code, body)) if proto && !table => reply(code, &body),
        Ok((code, body)) => json(code, &body),
        Err(e) => return error(e),
    };
    for warning in warnings {
        // The form kube-apiserver sends: code 299, no agent, the text quoted.
        let value = format!("299 - {warning:?}");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(WARNING, value);
        }
    }
    response
}

fn watch_request(
    target: &Target,
    fields: Selector,
    labels: Selector,
    query: &HashMap<String, String>,
    table: bool,
    state: &State,
) -> Result<WatchRequest, ApiError> {
    let flag = |key: &str| matches!(query.get(key).map(String::as_str), Some("true" | "1"));
    let after = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(s) => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s:?}")))?,
        ),
    };
    let initial_events = flag("sendInitialEvents");
    // Watching a name in the URL is the deprecated form of the name field selector.
    let fields = match &target.name {
        Some(name) => Selector::fields(&format!("metadata.name={name}"))?,
        None => fields,
    };
    Ok(WatchRequest {
        resource: target.resource,
        namespace: target.namespace.clone(),
        fields,
        labels,
        after: if initial_events { None } else { after },
        timeout,
        bookmarks: flag("allowWatchBookmarks"),
        initial_events_end: initial_events,
        table,
        bookmark_interval: state.bookmark_interval,
    })
}

/// A create, update, patch or delete of `target` with its body: the body decoded as
/// its content type says, then the verb. The status to answer with, the object, and
/// the warnings for fields the kind lacks.
pub(crate) async fn write(
    storage: &dyn Storage,
    target: &Target,
    verb: &str,
    content_type: &str,
    body: Bytes,
    validation: FieldValidation,
) -> Result<(StatusCode, Value, Vec<String>), ApiError> {
    let (body, warnings) = request_body(target, verb, content_type, body, validation)?;
    let created = |created: bool| {
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    };
    let (code, obj) = match verb {
        "create" => (
            StatusCode::CREATED,
            rest::create(storage, target, &body).await?,
        ),
        "update" => {
            let (obj, fresh) = rest::update(storage, target, &body).await?;
            (created(fresh), obj)
        }
        "patch" => {
            let (obj, fresh) = rest::patch(storage, target, content_type, &body).await?;
            (created(fresh), obj)
        }
        "delete" => (StatusCode::OK, rest::delete(storage, target, &body).await?),
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok((code, obj, warnings))
}

/// A create, update, patch or delete body as the verbs take it: JSON, from protobuf
/// when sent so, without the fields the kind lacks. Also the warnings for them.
fn request_body(
    target: &Target,
    verb: &str,
    content_type: &str,
    body: Bytes,
    validation: FieldValidation,
) -> Result<(Bytes, Vec<String>), ApiError> {
    let resource = target.resource;
    if protobuf::is_protobuf(content_type) {
        // Protobuf carries no unknown fields by name: Go's decoder skips them.
        return Ok((protobuf::decode_body(resource, &body)?.into(), vec![]));
    }
    let kind = match verb {
        "create" | "update" => Payload::Object,
        // A JSON patch names paths, not fields.
        "patch" if !content_type.starts_with("application/json-patch") => Payload::Patch,
        _ => return Ok((body, vec![])),
    };
    let (body, warnings) = openapi::check(resource, &body, validation, kind)?;
    Ok((body.into(), warnings))
}

/// Whether a client with this `Accept` header can read JSON.
fn accepts_json(accept: &str) -> bool {
    accept.trim().is_empty()
        || accept.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            matches!(media, "application/json" | "application/*" | "*/*")
        })
}

fn json(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An object in protobuf, or in JSON when its kind has no protobuf form here.
fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    let Some(bytes) = protobuf::encode(body) else {
        return json(code, body);
    };
    let mut response = Response::new(full(bytes));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(protobuf::MEDIA_TYPE));
    response
}

/// A Status, in protobuf when `proto`.
fn error_as(e: ApiError, proto: bool) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if proto {
        reply(code, &e.to_json())
    } else {
        json(code, &e.to_json())
    };
    if let Some(seconds) = e.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn streaming(mut lines: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::poll_fn(move |cx| {
        lines
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok::<_, Infallible>(Frame::data(l))))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
