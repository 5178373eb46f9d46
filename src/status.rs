//! What each HTTP status code means: class, reason, causes, fixes and retry advice.
//!
//! The table covers every code in the IANA HTTP Status Code Registry (RFC 9110
//! and the RFCs that extend it) plus nginx's non-standard 499, which statuslens
//! records when a client disconnects before the upstream has answered. Any
//! other code in 100..=599 is explained by its class, because RFC 9110 §15
//! requires clients to treat an unrecognised code like the x00 code of its class.
//!
//! Everything here is `'static` data: the proxy calls [`meaning`] once per
//! request for its access log, so lookups must never allocate.

use std::fmt;

/// The five status classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 1xx: interim responses sent before the final one.
    Informational,
    /// 2xx: the request was received, understood and accepted.
    Success,
    /// 3xx: the client must take further action, usually follow `Location`.
    Redirection,
    /// 4xx: the request itself is at fault.
    ClientError,
    /// 5xx: the server failed to fulfil a request that looked valid.
    ServerError,
}

impl Class {
    /// All five, in order.
    pub const ALL: [Class; 5] = [
        Class::Informational,
        Class::Success,
        Class::Redirection,
        Class::ClientError,
        Class::ServerError,
    ];

    /// Class of a code in 100..=599, else None.
    // `const` so the static table below can derive each entry's class at compile time.
    pub const fn of(code: u16) -> Option<Class> {
        match code {
            100..=199 => Some(Class::Informational),
            200..=299 => Some(Class::Success),
            300..=399 => Some(Class::Redirection),
            400..=499 => Some(Class::ClientError),
            500..=599 => Some(Class::ServerError),
            _ => None,
        }
    }

    /// The class a response with `code` is counted in: its own, and 5xx for a code
    /// outside 100..=599 (an upstream may send up to 999), which RFC 9110 §15 tells a
    /// client to treat as a server error. Metrics, the access log and `/api/status`
    /// agree on it.
    pub const fn counted(code: u16) -> Class {
        match Class::of(code) {
            Some(class) => class,
            None => Class::ServerError,
        }
    }

    /// "1xx" .. "5xx".
    pub fn label(self) -> &'static str {
        match self {
            Class::Informational => "1xx",
            Class::Success => "2xx",
            Class::Redirection => "3xx",
            Class::ClientError => "4xx",
            Class::ServerError => "5xx",
        }
    }

    /// e.g. "Informational", "Success", "Redirection", "Client error", "Server error".
    pub fn name(self) -> &'static str {
        match self {
            Class::Informational => "Informational",
            Class::Success => "Success",
            Class::Redirection => "Redirection",
            Class::ClientError => "Client error",
            Class::ServerError => "Server error",
        }
    }

    /// One-line meaning of the class, used for unknown-but-valid codes like 299 or 599.
    pub fn meaning(self) -> &'static str {
        match self {
            Class::Informational => {
                "interim response: request received, the final answer is still to come"
            }
            Class::Success => "success: the request was received, understood and accepted",
            Class::Redirection => {
                "redirection: further action is needed, e.g. follow the Location header"
            }
            Class::ClientError => {
                "client error: the request is wrong or not allowed — fix it first"
            }
            Class::ServerError => {
                "server error: the server failed to handle a seemingly valid request"
            }
        }
    }

    /// index 0..5 (1xx=0)
    pub fn index(self) -> usize {
        match self {
            Class::Informational => 0,
            Class::Success => 1,
            Class::Redirection => 2,
            Class::ClientError => 3,
            Class::ServerError => 4,
        }
    }
}

/// Whether retrying the same request can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retrying unchanged will not help; fix the request / credentials / permissions first.
    No,
    /// Retry is fine after honouring Retry-After if present, else exponential backoff with jitter.
    Backoff,
    /// Only safe for idempotent requests (GET/PUT/DELETE…) or with an idempotency key; use backoff.
    IdempotentOnly,
    /// Not an error: nothing to retry (1xx/2xx/3xx follow the redirect etc.).
    NotApplicable,
}

impl Retry {
    /// Stable machine-friendly label: "no", "backoff", "idempotent_only" or "n/a".
    pub fn label(self) -> &'static str {
        match self {
            Retry::No => "no",
            Retry::Backoff => "backoff",
            Retry::IdempotentOnly => "idempotent_only",
            Retry::NotApplicable => "n/a",
        }
    }
}

/// Everything statuslens knows about one code.
#[derive(Debug, Clone, Copy)]
pub struct StatusInfo {
    /// The numeric status code, 100..=599.
    pub code: u16,
    /// The class the code belongs to (its first digit).
    pub class: Class,
    /// IANA reason phrase, e.g. "Too Many Requests"; for unknown-but-valid codes the class name.
    pub reason: &'static str,
    /// One line, <= ~80 chars, plain words, e.g. "credentials missing, expired or invalid — check the token".
    pub meaning: &'static str,
    /// Typical causes (2–4 short items).
    pub causes: &'static [&'static str],
    /// What to do about it (2–4 short items).
    pub fix: &'static [&'static str],
    /// Whether resending the request can help.
    pub retry: Retry,
    /// One sentence of retry advice (mention Retry-After / backoff / idempotency where relevant).
    pub retry_advice: &'static str,
    /// true for IANA-registered codes (and 499, marked non-standard in its meaning), false for class fallbacks.
    pub registered: bool,
}

// Shared advice strings: the same wording for the same situation keeps the
// `explain` output consistent and the table shorter.
const NOT_AN_ERROR: &str = "Not an error, so there is nothing to retry.";
const INTERIM: &str = "Not an error: this is an interim response and the final status follows.";
const FOLLOW_REDIRECT: &str =
    "Not an error: follow the Location header instead of repeating the original request.";
const FIX_FIRST: &str =
    "Do not retry unchanged: the same request fails the same way until it is fixed.";

// Exactly seven arguments keeps clippy's `too_many_arguments` quiet while
// letting every table row read as one call; the class is derived, never typed.
const fn entry(
    code: u16,
    reason: &'static str,
    meaning: &'static str,
    causes: &'static [&'static str],
    fix: &'static [&'static str],
    retry: Retry,
    retry_advice: &'static str,
) -> StatusInfo {
    let class = match Class::of(code) {
        Some(class) => class,
        None => panic!("status table contains a code outside 100..=599"),
    };
    StatusInfo {
        code,
        class,
        reason,
        meaning,
        causes,
        fix,
        retry,
        retry_advice,
        registered: true,
    }
}

/// Number of entries in the static table (IANA-registered codes plus 499).
pub const REGISTERED_COUNT: usize = 63;

// A `const` (not only a `static`) so `build_index` can read it at compile time.
const TABLE: [StatusInfo; REGISTERED_COUNT] = [
    // ---- 1xx -------------------------------------------------------------
    entry(
        100,
        "Continue",
        "headers accepted; the client may now send the request body",
        &[
            "client sent `Expect: 100-continue` before a large upload",
            "server checked the headers and is ready for the body",
        ],
        &[
            "nothing to fix: send the body, the final status follows",
            "if a server never answers Expect, clients send the body after a short wait",
        ],
        Retry::NotApplicable,
        INTERIM,
    ),
    entry(
        101,
        "Switching Protocols",
        "server is switching to the protocol requested in the Upgrade header",
        &[
            "WebSocket handshake (`Upgrade: websocket`)",
            "upgrade to another protocol such as cleartext HTTP/2 (h2c)",
        ],
        &[
            "nothing to fix: carry on in the new protocol",
            "if unexpected, find out which client sent an Upgrade header",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        102,
        "Processing",
        "WebDAV interim reply: still working on it (RFC 2518, now deprecated)",
        &[
            "long-running WebDAV method, e.g. a deep COPY or MOVE",
            "server stopping the client from timing out while it works",
        ],
        &[
            "nothing to fix: wait for the final response",
            "clients may ignore it; RFC 4918 dropped it from WebDAV",
        ],
        Retry::NotApplicable,
        INTERIM,
    ),
    entry(
        103,
        "Early Hints",
        "preliminary headers (usually Link preloads) sent before the final reply",
        &[
            "server or CDN sends `Link: rel=preload` hints while it builds the page",
            "lets the client start fetching assets early (RFC 8297)",
        ],
        &[
            "nothing to fix: the final response follows",
            "clients that don't understand it simply ignore it",
        ],
        Retry::NotApplicable,
        INTERIM,
    ),
    // ---- 2xx -------------------------------------------------------------
    entry(
        200,
        "OK",
        "request succeeded; the body carries the result",
        &[
            "a GET returned the resource, e.g. one customer's details",
            "a POST, PUT or PATCH was processed and the result sent back",
            "reading or updating records through an API such as Salesforce REST",
        ],
        &[
            "nothing to fix",
            "still check the body: some APIs report errors inside a 200 payload",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        201,
        "Created",
        "request succeeded and created a new resource (see Location)",
        &[
            "a POST created a record, e.g. a new Account in Salesforce",
            "a PUT created a resource at the target URL",
        ],
        &[
            "nothing to fix: read the new ID or the Location header",
            "keep that ID so a later retry cannot create a duplicate",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        202,
        "Accepted",
        "accepted for processing, but the work has not finished yet",
        &[
            "asynchronous job, batch or bulk request queued",
            "work handed to a background worker or message queue",
        ],
        &[
            "poll the status URL the API returned, or wait for a callback",
            "don't treat it as done: the job can still fail later",
        ],
        Retry::NotApplicable,
        "Not an error: resending would queue the work twice, so poll for the outcome instead.",
    ),
    entry(
        203,
        "Non-Authoritative Information",
        "success, but a proxy modified the origin server's response",
        &[
            "a transforming proxy rewrote headers or the body",
            "a proxy or CDN recompressed images or otherwise transformed the content",
        ],
        &[
            "usually nothing to fix",
            "if the content looks wrong, check proxies that rewrite responses",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        204,
        "No Content",
        "success, and there is deliberately no body to return",
        &[
            "a DELETE removed a record",
            "a PUT or PATCH was saved and the server echoes nothing back",
        ],
        &[
            "nothing to fix; don't try to parse a body",
            "if you expected data, check the endpoint and method you called",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        205,
        "Reset Content",
        "success; the client should clear the form or view that sent it",
        &[
            "a form was submitted and the server wants it emptied for new input",
            "rare in APIs; mostly seen with HTML forms",
        ],
        &[
            "reset the input view",
            "don't expect a body: 205 never carries one",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        206,
        "Partial Content",
        "only the requested byte range(s) of the resource were sent",
        &[
            "client sent a Range header, e.g. to resume a download",
            "media player seeking inside a large file",
        ],
        &[
            "nothing to fix: assemble the parts",
            "read Content-Range to see which bytes arrived",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        207,
        "Multi-Status",
        "WebDAV: the body holds a separate status for each resource involved",
        &[
            "WebDAV PROPFIND, PROPPATCH or batch operation on several resources",
            "some of the sub-operations may have failed",
        ],
        &[
            "parse the multistatus body and check every item's status",
            "don't treat the 207 itself as complete success",
        ],
        Retry::NotApplicable,
        "Nothing to retry as a whole; resend only the sub-operations whose own status failed.",
    ),
    entry(
        208,
        "Already Reported",
        "WebDAV: members already listed earlier in this reply are not repeated",
        &[
            "WebDAV bindings (RFC 5842) make one resource reachable by several paths",
            "a `Depth: infinity` listing reached a collection it had already reported",
        ],
        &[
            "nothing to fix: use the earlier entry in the same multistatus body",
            "normally appears inside a 207 Multi-Status body, not as the response status",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        226,
        "IM Used",
        "delta encoding: the body is a set of changes, not the full resource",
        &[
            "client sent an A-IM header asking for a delta (RFC 3229)",
            "server supports delta encoding for this resource",
        ],
        &[
            "apply the delta to your cached copy",
            "if unexpected, stop sending the A-IM header",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    // ---- 3xx -------------------------------------------------------------
    entry(
        300,
        "Multiple Choices",
        "several representations exist and the client should pick one",
        &[
            "content negotiation found more than one match",
            "server lists alternative formats or languages",
        ],
        &[
            "choose one of the listed alternatives, or follow Location if given",
            "send more specific Accept headers",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    entry(
        301,
        "Moved Permanently",
        "resource has a new permanent URL (see Location)",
        &[
            "API or site moved to a new path or domain",
            "redirect from http to https, or to a canonical URL",
        ],
        &[
            "update the stored URL or configuration to the new location",
            "clients may turn a POST into a GET here; servers should use 308 to keep it",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    entry(
        302,
        "Found",
        "resource is temporarily at another URL (see Location)",
        &[
            "login or OAuth flow sending the client to an identity provider",
            "temporary move or load-balancer redirect",
        ],
        &[
            "follow Location but keep using the original URL next time",
            "an API answering 302 to a login page usually means the token is missing",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    entry(
        303,
        "See Other",
        "the result lives at another URL; fetch it there with GET",
        &[
            "post/redirect/get pattern after a form or API submission",
            "finished async job pointing at its result",
        ],
        &[
            "GET the Location URL",
            "don't resend the original POST: it has already been handled",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    entry(
        304,
        "Not Modified",
        "the cached copy is still current, so no body was sent",
        &[
            "conditional GET whose If-None-Match or If-Modified-Since matched",
            "browser or client cache revalidating a stored response",
        ],
        &[
            "nothing to fix: use the cached copy",
            "if the client keeps no cache, stop sending conditional headers",
        ],
        Retry::NotApplicable,
        NOT_AN_ERROR,
    ),
    entry(
        305,
        "Use Proxy",
        "deprecated: asks the client to go through the proxy in Location",
        &[
            "legacy server configuration",
            "deprecated because it let a server steer clients through any proxy it chose",
        ],
        &[
            "clients should not obey it; fix or remove the server rule",
            "configure any required proxy on the client side instead",
        ],
        Retry::NotApplicable,
        "Not an error, but do not follow it: configure the proxy explicitly if one is needed.",
    ),
    entry(
        307,
        "Temporary Redirect",
        "temporarily elsewhere; repeat the same method and body at Location",
        &[
            "temporary move, maintenance host or regional endpoint",
            "http to https redirect that must keep a POST a POST",
        ],
        &[
            "follow Location with the same method and body",
            "keep using the original URL for future requests",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    entry(
        308,
        "Permanent Redirect",
        "moved for good; repeat the same method and body at Location",
        &[
            "API endpoint permanently moved or renamed",
            "permanent redirect that must not turn a POST into a GET",
        ],
        &[
            "update the stored URL to the new location",
            "follow Location with the same method and body",
        ],
        Retry::NotApplicable,
        FOLLOW_REDIRECT,
    ),
    // ---- 4xx -------------------------------------------------------------
    entry(
        400,
        "Bad Request",
        "request is malformed — check the syntax, JSON and required fields",
        &[
            "invalid JSON or a malformed body",
            "required field missing, or a value of the wrong type",
            "bad query parameter or header syntax",
            "invalid payload sent to an API such as Salesforce REST",
        ],
        &[
            "validate input before sending it",
            "check the body is well-formed and matches the API's schema",
            "read the error body: most APIs name the offending field",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        401,
        "Unauthorized",
        "credentials missing, expired or invalid — check the token",
        &[
            "no Authorization header sent",
            "OAuth access token expired or revoked",
            "API key or client secret rotated but not updated in the integration",
            "Salesforce integration presenting an invalid OAuth token",
        ],
        &[
            "refresh the access token (or obtain a new one), then resend",
            "check the credentials configured for the integration",
            "read WWW-Authenticate for the scheme the server expects",
        ],
        Retry::No,
        "Do not retry unchanged: refresh or correct the credentials, then send it once more.",
    ),
    entry(
        402,
        "Payment Required",
        "reserved; some APIs use it when billing or a paid plan blocks the call",
        &[
            "subscription lapsed or payment method declined",
            "feature or quota requires a higher paid plan",
        ],
        &[
            "check the account's billing status with the provider",
            "upgrade the plan or contact the provider",
        ],
        Retry::No,
        "Do not retry: nothing changes until the billing problem is sorted out.",
    ),
    entry(
        403,
        "Forbidden",
        "authenticated, but not allowed to do this — check permissions",
        &[
            "user or token lacks the needed role, scope or profile permission",
            "action is restricted, e.g. a standard user deleting an admin-only record",
            "IP allow-list, firewall or WAF rule blocked the request",
        ],
        &[
            "grant the missing permission or OAuth scope",
            "call with an account that is allowed to act on this resource",
            "check IP restrictions and firewall rules",
        ],
        Retry::No,
        "Do not retry: a fresh token with the same rights is refused again; change the permissions.",
    ),
    entry(
        404,
        "Not Found",
        "nothing at this URL — check the path, the ID, or whether it was deleted",
        &[
            "typo in the path, or the wrong API version",
            "record ID does not exist or the record was deleted",
            "base URL points at the wrong environment (e.g. sandbox vs production)",
            "server hides a resource you may not see behind a 404",
        ],
        &[
            "verify the URL, API version and record ID",
            "check that the record still exists",
            "confirm the base URL targets the intended environment",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        405,
        "Method Not Allowed",
        "the endpoint exists but not for this HTTP method (see Allow)",
        &[
            "PUT used where the API expects POST, or the other way round",
            "writing to a read-only endpoint",
        ],
        &[
            "use one of the methods listed in the Allow header",
            "check the API documentation for the endpoint",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        406,
        "Not Acceptable",
        "server cannot produce a format that satisfies the Accept headers",
        &[
            "Accept asks for a media type the API does not serve",
            "Accept-Language or Accept-Encoding is too restrictive",
        ],
        &[
            "ask for a supported type, e.g. `Accept: application/json`",
            "relax or drop the restrictive Accept-* header",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        407,
        "Proxy Authentication Required",
        "a forward proxy between client and server wants credentials",
        &[
            "corporate proxy requires a login",
            "proxy credentials missing or expired",
        ],
        &[
            "configure proxy credentials (Proxy-Authorization) in the client",
            "read Proxy-Authenticate for the scheme the proxy expects",
        ],
        Retry::No,
        "Do not retry unchanged: supply proxy credentials first.",
    ),
    entry(
        408,
        "Request Timeout",
        "server gave up waiting for the client to finish sending the request",
        &[
            "client was slow or stalled while sending the request",
            "server closed an idle keep-alive connection",
            "network stall during a large upload",
        ],
        &[
            "resend the request, preferably on a new connection",
            "check the client's network and upload speed",
            "raise the server's read timeout if legitimate uploads are slow",
        ],
        Retry::Backoff,
        "Retrying is fine: the server never saw the whole request; back off if it keeps happening.",
    ),
    entry(
        409,
        "Conflict",
        "request clashes with the resource's current state — resolve it first",
        &[
            "creating something that already exists, e.g. a duplicate email",
            "someone else changed the resource since you read it",
            "version or state mismatch (e.g. closing an already closed order)",
        ],
        &[
            "re-read the current state and resolve the conflict",
            "look up or upsert existing records instead of blindly creating",
            "read the error body for the conflicting field",
        ],
        Retry::No,
        "Do not retry blindly: re-read, merge or pick another key, then resend.",
    ),
    entry(
        410,
        "Gone",
        "the resource was removed on purpose and will not come back",
        &[
            "record permanently deleted",
            "API version or endpoint retired",
        ],
        &[
            "remove references to this URL",
            "migrate to the replacement endpoint or API version",
        ],
        Retry::No,
        "Do not retry: the resource is permanently gone.",
    ),
    entry(
        411,
        "Length Required",
        "server insists on a Content-Length header for this request",
        &[
            "body sent with chunked transfer encoding to a server that refuses it",
            "POST or PUT sent without Content-Length",
        ],
        &[
            "send a Content-Length header (buffer the body first if needed)",
            "check the client library's streaming settings",
        ],
        Retry::No,
        "Do not retry unchanged: add Content-Length, then resend.",
    ),
    entry(
        412,
        "Precondition Failed",
        "a conditional header such as If-Match did not hold",
        &[
            "If-Match carried a stale ETag: the resource changed since you read it",
            "If-Unmodified-Since is older than the last change",
        ],
        &[
            "fetch the resource again for its current ETag",
            "reapply your change to the fresh copy and resend",
        ],
        Retry::No,
        "Do not retry unchanged: re-read the resource and resend with the current validator.",
    ),
    entry(
        413,
        "Content Too Large",
        "request body is bigger than the server accepts — send less",
        &[
            "uploading a file or batch larger than the API allows",
            "body-size limit on a proxy, e.g. nginx `client_max_body_size`",
        ],
        &[
            "split the payload into smaller batches or chunks",
            "compress it, or use the API's bulk or upload endpoint",
            "raise the limit if you run the server",
        ],
        Retry::No,
        "Do not retry unchanged: shrink the body first (with Retry-After the limit is temporary).",
    ),
    entry(
        414,
        "URI Too Long",
        "the URL is longer than the server will accept — request too big",
        &[
            "too many or too long query parameters",
            "data that belongs in a body packed into the query string",
            "redirect loop that keeps appending to the URL",
        ],
        &[
            "move large parameters into a POST body",
            "shorten the query or split it into several requests",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        415,
        "Unsupported Media Type",
        "server cannot handle the body's Content-Type or Content-Encoding",
        &[
            "missing or wrong Content-Type, e.g. text/plain for JSON",
            "body compressed with an encoding the server does not support",
        ],
        &[
            "set the Content-Type the API expects, e.g. application/json",
            "check Accept-Post / Accept-Encoding in the response for what is allowed",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        416,
        "Range Not Satisfiable",
        "the requested byte range lies outside the resource",
        &[
            "Range starts beyond the end of the file",
            "resuming a download of a file that has since changed or shrunk",
        ],
        &[
            "read Content-Range in the response for the real size",
            "restart the download without a Range header",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        417,
        "Expectation Failed",
        "server cannot meet the Expect header (usually 100-continue)",
        &[
            "server or proxy does not support `Expect: 100-continue`",
            "unknown expectation in the Expect header",
        ],
        &[
            "resend without the Expect header",
            "disable 100-continue in the client library for this host",
        ],
        Retry::No,
        "Do not retry unchanged: drop the Expect header, then resend.",
    ),
    entry(
        418,
        "I'm a teapot",
        "joke code from RFC 2324, reserved as unused by RFC 9110",
        &[
            "an easter-egg endpoint answering an April Fools' protocol",
            "some servers send it on purpose to turn away bots or scrapers",
        ],
        &[
            "check whether the server is deliberately refusing this client",
            "don't build on it: RFC 9110 marks 418 as unused",
        ],
        Retry::No,
        "Do not retry: the server is refusing on purpose.",
    ),
    entry(
        421,
        "Misdirected Request",
        "sent to a server that cannot answer for this host or scheme",
        &[
            "HTTP/2 connection reused for another hostname sharing the certificate",
            "TLS SNI does not match the Host header",
            "proxy or load balancer routed the request to the wrong backend",
        ],
        &[
            "retry on a new connection to the correct host",
            "check SNI, Host and certificate configuration",
        ],
        Retry::Backoff,
        "Safe to retry on a new connection: the server did not process the request.",
    ),
    entry(
        422,
        "Unprocessable Content",
        "body is well-formed but fails validation — fix the field values",
        &[
            "values break business rules, e.g. an end date before the start date",
            "semantically invalid data inside otherwise valid JSON",
        ],
        &[
            "read the error details and fix the offending fields",
            "validate data against the API's rules before sending",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        423,
        "Locked",
        "WebDAV: the resource is locked by someone else",
        &[
            "another client holds a WebDAV lock on the resource",
            "a stale lock was never released",
        ],
        &[
            "wait for the lock to be released, or send the lock token you hold",
            "find and clear stale locks",
        ],
        Retry::Backoff,
        "Retry later with backoff once the lock is likely gone, or resend with your lock token.",
    ),
    entry(
        424,
        "Failed Dependency",
        "WebDAV: failed because an action it depended on failed",
        &[
            "an earlier operation in the same batch failed",
            "one property in a PROPPATCH failed, so the rest were rolled back",
        ],
        &[
            "find the failing operation in the multistatus body and fix it",
            "resend the whole batch after the fix",
        ],
        Retry::No,
        "Do not retry unchanged: fix the operation that failed first.",
    ),
    entry(
        425,
        "Too Early",
        "server won't process a replayable TLS early-data request",
        &[
            "request sent in TLS 1.3 0-RTT early data",
            "a proxy forwarded early data (`Early-Data: 1`) to the origin",
        ],
        &[
            "resend after the TLS handshake has completed",
            "disable 0-RTT for non-idempotent requests",
        ],
        Retry::Backoff,
        "Safe to retry once the handshake is complete: the server did not process the request.",
    ),
    entry(
        426,
        "Upgrade Required",
        "server refuses this protocol; switch to the one in the Upgrade header",
        &[
            "server requires TLS or a newer HTTP version",
            "endpoint only speaks WebSocket",
        ],
        &[
            "switch to the protocol named in the Upgrade header",
            "update or reconfigure the client library",
        ],
        Retry::No,
        "Do not retry unchanged: switch protocol first.",
    ),
    entry(
        428,
        "Precondition Required",
        "server demands a conditional request (If-Match) to avoid lost updates",
        &[
            "PUT, PATCH or DELETE sent without If-Match",
            "API enforces optimistic concurrency control",
        ],
        &[
            "GET the resource, then resend with `If-Match: <ETag>`",
            "keep ETags from earlier reads in the client",
        ],
        Retry::No,
        "Do not retry unchanged: add the precondition header, then resend.",
    ),
    entry(
        429,
        "Too Many Requests",
        "rate limit hit — slow down and honour Retry-After",
        &[
            "too many calls in the provider's time window",
            "API usage limits exceeded, e.g. on a platform like Salesforce",
            "many workers sharing one API key or token",
            "clients retrying immediately without backoff (retry storm)",
        ],
        &[
            "wait for Retry-After, then retry with exponential backoff and jitter",
            "make fewer calls: batch, cache, or use bulk/composite endpoints",
            "spread load over time and watch rate-limit headers",
        ],
        Retry::Backoff,
        "Wait for Retry-After if sent, else use exponential backoff with jitter; instant retries prolong it.",
    ),
    entry(
        431,
        "Request Header Fields Too Large",
        "headers (often cookies or a token) exceed the server's size limit",
        &[
            "cookies that have piled up over time",
            "a very large bearer token or JWT",
            "too many or too long custom headers",
        ],
        &[
            "clear or trim cookies",
            "shrink the token or the custom headers",
            "raise header limits if you run the server",
        ],
        Retry::No,
        "Do not retry unchanged: make the headers smaller first.",
    ),
    entry(
        451,
        "Unavailable For Legal Reasons",
        "blocked for legal reasons, e.g. a court order or sanctions",
        &[
            "government or court-ordered takedown",
            "regional blocking imposed by regulation",
        ],
        &[
            "no technical fix; the `Link: rel=\"blocked-by\"` header may say who blocked it",
            "involve the provider or your legal team",
        ],
        Retry::No,
        "Do not retry: the block is legal, not technical.",
    ),
    entry(
        499,
        "Client Closed Request",
        "non-standard (nginx): client hung up before the response was sent",
        &[
            "client timeout shorter than the upstream's response time",
            "user cancelled, navigated away or closed the app",
            "load balancer in front of statuslens gave up first",
            "statuslens logs it itself (source client); the upstream never sent a 499",
        ],
        &[
            "compare upstream latency with the client's timeout",
            "raise the client or load-balancer timeout if the work is legitimately slow",
            "speed up the endpoint, or move long work to an async job",
        ],
        Retry::IdempotentOnly,
        "The upstream may have finished anyway, so repeat only idempotent or idempotency-keyed calls.",
    ),
    // ---- 5xx -------------------------------------------------------------
    entry(
        500,
        "Internal Server Error",
        "unexpected failure on the server, usually a bug — check its logs",
        &[
            "unhandled exception or bug in the application",
            "misconfiguration or a failing dependency not handled gracefully",
            "unusual input triggering an edge case",
        ],
        &[
            "look for the stack trace in the upstream's logs or error tracker",
            "report it to the provider with the request ID and timestamp",
            "if one input always triggers it, change that input meanwhile",
        ],
        Retry::IdempotentOnly,
        "Retry only idempotent or idempotency-keyed requests, with backoff: work may be half done.",
    ),
    entry(
        501,
        "Not Implemented",
        "server does not support the functionality (often the method) requested",
        &[
            "HTTP method the server does not recognise",
            "feature announced but not built yet",
        ],
        &[
            "use a supported method or endpoint",
            "check the API version and documentation",
        ],
        Retry::No,
        "Do not retry: the server lacks the feature, so the answer will not change.",
    ),
    entry(
        502,
        "Bad Gateway",
        "a proxy or gateway got an invalid reply from the server behind it",
        &[
            "upstream crashed, reset the connection or sent a garbled reply",
            "if statuslens sent it: upstream unreachable, or its response head garbled or too large",
            "upstream restarting during a deploy",
            "broken link between services in a multi-system integration",
        ],
        &[
            "check the upstream is running and listening on the configured address",
            "compare gateway and upstream logs at the same timestamp",
            "look for upstream crashes, restarts or TLS/protocol mismatches",
            "statuslens_upstream_errors_total{kind} says which: connect, reset or protocol",
        ],
        Retry::IdempotentOnly,
        "Often transient: retry idempotent requests with backoff; others may have reached the upstream.",
    ),
    entry(
        503,
        "Service Unavailable",
        "server is overloaded or down for maintenance — retry later",
        &[
            "planned maintenance",
            "traffic spike or overload: the server is shedding load",
            "temporary platform issue, e.g. on Salesforce",
            "statuslens itself (source=proxy): a limit it enforces, or it is shutting down",
        ],
        &[
            "retry after the Retry-After delay, or a few minutes",
            "check the provider's status page or maintenance calendar",
            "scale the upstream or reduce the load on it",
            "statuslens' own: raise the limit it hit; if cut at drain, retry only if idempotent",
        ],
        Retry::Backoff,
        "Retry after Retry-After if present, else exponential backoff with jitter.",
    ),
    entry(
        504,
        "Gateway Timeout",
        "a proxy or gateway gave up waiting for the server behind it",
        &[
            "upstream too slow, e.g. a slow query or heavy job",
            "if statuslens sent it: the upstream did not answer within the proxy timeout",
            "network trouble between systems in a chained integration",
        ],
        &[
            "find out why the upstream is slow (logs, slow queries)",
            "move long work to an async job (202 plus polling)",
            "raise the gateway timeout only if the work is legitimately slow",
        ],
        Retry::IdempotentOnly,
        "Retry idempotent requests with backoff; the upstream may have finished after the timeout.",
    ),
    entry(
        505,
        "HTTP Version Not Supported",
        "server refuses the HTTP major version the request used",
        &[
            "client speaks an HTTP version the server does not",
            "proxy misconfigured to use the wrong protocol upstream",
        ],
        &[
            "use HTTP/1.1 or another version the server supports",
            "check client and proxy protocol settings",
        ],
        Retry::No,
        "Do not retry unchanged: switch HTTP version first.",
    ),
    entry(
        506,
        "Variant Also Negotiates",
        "server misconfiguration: content negotiation points back at itself",
        &[
            "transparent content negotiation (RFC 2295) set up in a loop",
            "a chosen variant is itself configured to negotiate",
        ],
        &[
            "the server operator must fix the variant configuration",
            "report it to the provider; clients cannot work around it",
        ],
        Retry::No,
        "Do not retry: it is a configuration error that persists until fixed.",
    ),
    entry(
        507,
        "Insufficient Storage",
        "WebDAV: the server cannot store what it needs to finish the request",
        &[
            "disk full on the server",
            "user or account storage quota exceeded",
        ],
        &[
            "free space or raise the quota",
            "upload less data",
        ],
        Retry::Backoff,
        "Meant to be temporary: retry with backoff once space has been freed.",
    ),
    entry(
        508,
        "Loop Detected",
        "WebDAV: server stopped an infinite loop while walking collections",
        &[
            "cycle of bindings in the collection tree",
            "`Depth: infinity` request over a looping hierarchy",
        ],
        &[
            "remove the cycle from the collection structure",
            "use a finite Depth header",
        ],
        Retry::No,
        FIX_FIRST,
    ),
    entry(
        510,
        "Not Extended",
        "obsolete: the request lacks an HTTP extension the server requires",
        &[
            "server expects an RFC 2774 extension declaration the client omitted",
            "rare; RFC 2774 is historic",
        ],
        &[
            "add the extension the response body describes",
            "ask the provider whether the requirement is still real",
        ],
        Retry::No,
        "Do not retry unchanged: add the required extension first.",
    ),
    entry(
        511,
        "Network Authentication Required",
        "a captive portal wants you to log in to the network first",
        &[
            "hotel, airport or guest Wi-Fi intercepting traffic",
            "network access control in front of the client",
        ],
        &[
            "log in through the network's portal, usually in a browser",
            "run servers and integrations on networks without captive portals",
        ],
        Retry::No,
        "Do not retry until the network login is done.",
    ),
];

static ENTRIES: [StatusInfo; REGISTERED_COUNT] = TABLE;

// Maps `code - 100` to `table position + 1` (0 = not registered). Built at
// compile time so a lookup is one array read, and so a mis-sorted or
// duplicated table row fails the build instead of a test.
static INDEX: [u8; 500] = build_index();

const fn build_index() -> [u8; 500] {
    let mut index = [0u8; 500];
    let mut i = 0;
    while i < TABLE.len() {
        if i > 0 && TABLE[i - 1].code >= TABLE[i].code {
            panic!("status table must be sorted by code without duplicates");
        }
        index[(TABLE[i].code - 100) as usize] = (i + 1) as u8;
        i += 1;
    }
    index
}

// Causes shared by every class fallback: an unregistered code is either
// someone's private invention or newer than this table.
const UNREGISTERED_CAUSES: &[&str] = &[
    "a non-standard code chosen by the server, framework or a proxy",
    "a code registered with IANA after this table was written",
];

fn fallback(code: u16, class: Class) -> StatusInfo {
    let (fix, retry, retry_advice): (&'static [&'static str], Retry, &'static str) = match class {
        Class::Informational => (
            &[
                "nothing to fix: wait for the final response",
                "clients treat it like 100 Continue",
            ],
            Retry::NotApplicable,
            INTERIM,
        ),
        Class::Success => (
            &[
                "nothing to fix: clients treat it like 200 OK",
                "check the API docs for what this code means to its author",
            ],
            Retry::NotApplicable,
            NOT_AN_ERROR,
        ),
        Class::Redirection => (
            &[
                "follow Location if present; clients treat it like 300",
                "check the API docs for what this code means to its author",
            ],
            Retry::NotApplicable,
            FOLLOW_REDIRECT,
        ),
        Class::ClientError => (
            &[
                "read the response body for the server's explanation",
                "fix the request; clients treat it like 400 Bad Request",
            ],
            Retry::No,
            FIX_FIRST,
        ),
        Class::ServerError => (
            &[
                "check the upstream's logs for the failure",
                "clients treat it like 500 Internal Server Error",
            ],
            // Unknown server failure: the work may have partly happened, the
            // same caution as 500 applies.
            Retry::IdempotentOnly,
            "Retry only idempotent or idempotency-keyed requests, with backoff.",
        ),
    };
    StatusInfo {
        code,
        class,
        reason: class.name(),
        meaning: class.meaning(),
        causes: UNREGISTERED_CAUSES,
        fix,
        retry,
        retry_advice,
        registered: false,
    }
}

fn registered(code: u16) -> Option<&'static StatusInfo> {
    let slot = *INDEX.get(usize::from(code.checked_sub(100)?))?;
    match slot {
        0 => None,
        n => Some(&ENTRIES[usize::from(n) - 1]),
    }
}

/// Information for any code in 100..=599: registered codes get their own
/// entry, others fall back to their class. None outside that range.
pub fn lookup(code: u16) -> Option<StatusInfo> {
    let class = Class::of(code)?;
    Some(match registered(code) {
        Some(info) => *info,
        None => fallback(code, class),
    })
}

/// Short meaning for the access log; never "" for 100..=599, and
/// "invalid status code" for anything else. Called once per request, so it
/// does no allocation and no copying: one array read.
pub fn meaning(code: u16) -> &'static str {
    // Deliberately avoids `lookup`, which would copy a whole StatusInfo just
    // to read one field on the per-request path.
    match (registered(code), Class::of(code)) {
        (Some(info), _) => info.meaning,
        (None, Some(class)) => class.meaning(),
        (None, None) => "invalid status code",
    }
}

/// All registered entries in code order (for docs/tests/`explain --all`).
pub fn all() -> &'static [StatusInfo] {
    &ENTRIES
}

/// Why [`parse_code`] rejected its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCodeError {
    /// The input exactly as given (untrimmed), so the message shows what the user typed.
    pub input: String,
    /// Short explanation of what was wrong.
    pub reason: &'static str,
}

impl fmt::Display for ParseCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug formatting quotes the input and makes stray whitespace visible.
        write!(
            f,
            "{:?} is not an HTTP status code: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseCodeError {}

const EXPECTED_THREE_DIGITS: &str = "expected a three-digit number from 100 to 599";
const OUT_OF_RANGE: &str = "status codes run from 100 to 599";

/// Parse user input like "429" for `statuslens explain`; surrounding
/// whitespace is ignored. Errors (with a message naming the input) for
/// non-numbers, "42", "1000", "600", "099", "+404", etc.
pub fn parse_code(input: &str) -> Result<u16, ParseCodeError> {
    let err = |reason| ParseCodeError {
        input: input.to_owned(),
        reason,
    };
    let digits = input.trim();
    // `u16::from_str` would accept "+404" and "0404"; a status code is
    // exactly three ASCII digits, so check the shape by hand.
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(EXPECTED_THREE_DIGITS));
    }
    let code = digits
        .bytes()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    if Class::of(code).is_none() {
        return Err(err(OUT_OF_RANGE));
    }
    Ok(code)
}

/// The text `statuslens explain CODE` prints: a header line
/// "429 Too Many Requests (4xx Client error)", then `Meaning:`, `Typical causes:`
/// (bulleted), `How to fix:` (bulleted) and `Retry: <label> — <advice>`.
/// For unknown-but-valid codes the header says the code is unregistered and a
/// note explains that it is described by its class.
pub fn render_explain(info: &StatusInfo) -> String {
    Explain(info).to_string()
}

// Display wrapper so rendering can use `writeln!` with `?` instead of
// ignoring the (infallible) results of writing into a String.
struct Explain<'a>(&'a StatusInfo);

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.0;
        let class = info.class;
        if info.registered {
            writeln!(
                f,
                "{} {} ({} {})",
                info.code,
                info.reason,
                class.label(),
                class.name()
            )?;
        } else {
            let what = if info.code == 306 {
                "(Unused)"
            } else {
                "Unregistered status code"
            };
            writeln!(
                f,
                "{} {what} ({} {})",
                info.code,
                class.label(),
                class.name()
            )?;
            // 306 is in the registry, but only as "(Unused)": reserved, with no meaning.
            if info.code == 306 {
                write!(
                    f,
                    "Note: 306 is registered only as (Unused): RFC 9110 §15.4.7 reserves it \
                     (an early draft's Switch Proxy) and gives it no meaning"
                )?;
            } else {
                write!(f, "Note: {} is not in the IANA registry", info.code)?;
            }
            writeln!(
                f,
                "; clients handle it like {}, so this explains its class.",
                (class.index() + 1) * 100
            )?;
        }
        writeln!(f, "Meaning: {}", info.meaning)?;
        writeln!(f, "Typical causes:")?;
        for cause in info.causes {
            writeln!(f, "  - {cause}")?;
        }
        writeln!(f, "How to fix:")?;
        for fix in info.fix {
            writeln!(f, "  - {fix}")?;
        }
        writeln!(f, "Retry: {} — {}", info.retry.label(), info.retry_advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTERED: [u16; REGISTERED_COUNT] = [
        100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303,
        304, 305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413,
        414, 415, 416, 417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 499, 500, 501,
        502, 503, 504, 505, 506, 507, 508, 510, 511,
    ];

    #[test]
    fn table_covers_exactly_the_registered_codes_in_order() {
        let codes: Vec<u16> = all().iter().map(|i| i.code).collect();
        assert_eq!(codes, REGISTERED.to_vec());
    }

    #[test]
    fn every_registered_entry_is_complete_and_classed() {
        for &code in &REGISTERED {
            let info = lookup(code).unwrap_or_else(|| panic!("{code} missing"));
            assert_eq!(info.code, code);
            assert!(info.registered, "{code} should be registered");
            let expected_class = Class::ALL[usize::from(code / 100) - 1];
            assert_eq!(info.class, expected_class, "{code} class");
            assert!(!info.reason.is_empty(), "{code} reason");
            assert!(!info.meaning.trim().is_empty(), "{code} meaning");
            assert!(!info.retry_advice.trim().is_empty(), "{code} advice");
            assert!(
                (2..=4).contains(&info.causes.len()),
                "{code} needs 2-4 causes"
            );
            assert!((2..=4).contains(&info.fix.len()), "{code} needs 2-4 fixes");
            assert!(info.causes.iter().all(|c| !c.trim().is_empty()));
            assert!(info.fix.iter().all(|c| !c.trim().is_empty()));
        }
    }

    #[test]
    fn text_fields_fit_on_one_line() {
        let fallbacks = [150, 299, 399, 498, 599].map(|c| lookup(c).unwrap());
        for info in all().iter().chain(fallbacks.iter()) {
            let code = info.code;
            assert!(
                info.meaning.chars().count() <= 80,
                "{code} meaning too long: {}",
                info.meaning
            );
            assert!(info.retry_advice.chars().count() <= 100, "{code} advice");
            let lines = [info.reason, info.meaning, info.retry_advice];
            let all_text = lines
                .iter()
                .chain(info.causes)
                .chain(info.fix)
                .collect::<Vec<_>>();
            assert!(all_text.iter().all(|t| !t.contains('\n')), "{code}");
            assert!(info.causes.iter().all(|c| c.chars().count() <= 90));
            assert!(info.fix.iter().all(|c| c.chars().count() <= 90));
        }
    }

    #[test]
    fn unknown_valid_codes_fall_back_to_their_class() {
        let info = lookup(299).unwrap();
        assert_eq!(info.code, 299);
        assert_eq!(info.class, Class::Success);
        assert!(!info.registered);
        assert_eq!(info.reason, "Success");
        assert_eq!(info.meaning, Class::Success.meaning());
        assert_eq!(info.retry, Retry::NotApplicable);

        let info = lookup(599).unwrap();
        assert_eq!(info.code, 599);
        assert_eq!(info.class, Class::ServerError);
        assert!(!info.registered);
        assert_eq!(info.reason, "Server error");
        assert_eq!(info.retry, Retry::IdempotentOnly);

        assert_eq!(lookup(420).unwrap().retry, Retry::No);
        assert!(!lookup(306).unwrap().registered, "306 is (Unused)");
        // ...which the explanation says, instead of calling it unregistered.
        let text = render_explain(&lookup(306).unwrap());
        assert!(
            text.starts_with("306 (Unused) (3xx Redirection)\n"),
            "{text}"
        );
        assert!(text.contains("registered only as (Unused)"), "{text}");
        assert!(!text.contains("not in the IANA registry"), "{text}");
        assert!(text.contains("like 300"), "{text}");
    }

    #[test]
    fn out_of_range_codes_are_none() {
        for code in [0, 1, 99, 600, 999, 1000, u16::MAX] {
            assert!(lookup(code).is_none(), "{code}");
            assert_eq!(meaning(code), "invalid status code");
        }
    }

    #[test]
    fn meaning_matches_lookup_for_every_valid_code() {
        for code in 100..=599 {
            let info = lookup(code).unwrap();
            assert_eq!(meaning(code), info.meaning, "{code}");
            assert!(!meaning(code).is_empty(), "{code}");
        }
    }

    #[test]
    fn parse_code_accepts_valid_codes() {
        assert_eq!(parse_code("100"), Ok(100));
        assert_eq!(parse_code("599"), Ok(599));
        assert_eq!(parse_code("  404 "), Ok(404));
        assert_eq!(parse_code("299"), Ok(299));
    }

    #[test]
    fn parse_code_rejects_invalid_input() {
        for bad in [
            "", "   ", "abc", "42", "1000", "600", "99", "099", "-1", "4O4", "+42", "+404", "4 4",
            "40 4", "٤٠٤", "0x1F",
        ] {
            let err = parse_code(bad).expect_err(bad);
            assert_eq!(err.input, bad);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{bad:?}")),
                "message should name the input: {msg}"
            );
            assert!(msg.contains("100") && msg.contains("599"), "{msg}");
        }
    }

    #[test]
    fn parse_error_message_format() {
        let err = parse_code("abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"abc\" is not an HTTP status code: expected a three-digit number from 100 to 599"
        );
        let err = parse_code("600").unwrap_err();
        assert_eq!(err.reason, OUT_OF_RANGE);
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().contains("\"600\""));
    }

    #[test]
    fn retry_classification() {
        let retry = |code| lookup(code).unwrap().retry;
        assert_eq!(retry(401), Retry::No);
        assert_eq!(retry(400), Retry::No);
        assert_eq!(retry(404), Retry::No);
        assert_eq!(retry(409), Retry::No);
        assert_eq!(retry(408), Retry::Backoff);
        assert_eq!(retry(429), Retry::Backoff);
        assert_eq!(retry(503), Retry::Backoff);
        assert_eq!(retry(500), Retry::IdempotentOnly);
        assert_eq!(retry(200), Retry::NotApplicable);
        for code in 100..=599 {
            let info = lookup(code).unwrap();
            let is_error = code >= 400;
            assert_eq!(
                info.retry == Retry::NotApplicable,
                !is_error,
                "{code}: only 1xx-3xx are not applicable"
            );
        }
    }

    #[test]
    fn retry_labels() {
        assert_eq!(Retry::No.label(), "no");
        assert_eq!(Retry::Backoff.label(), "backoff");
        assert_eq!(Retry::IdempotentOnly.label(), "idempotent_only");
        assert_eq!(Retry::NotApplicable.label(), "n/a");
    }

    #[test]
    fn class_helpers() {
        assert_eq!(Class::of(99), None);
        assert_eq!(Class::of(100), Some(Class::Informational));
        assert_eq!(Class::of(199), Some(Class::Informational));
        assert_eq!(Class::of(200), Some(Class::Success));
        assert_eq!(Class::of(399), Some(Class::Redirection));
        assert_eq!(Class::of(499), Some(Class::ClientError));
        assert_eq!(Class::of(599), Some(Class::ServerError));
        assert_eq!(Class::of(600), None);
        let labels: Vec<_> = Class::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["1xx", "2xx", "3xx", "4xx", "5xx"]);
        for (i, class) in Class::ALL.iter().enumerate() {
            assert_eq!(class.index(), i);
            assert!(!class.name().is_empty());
            assert!(!class.meaning().is_empty());
        }
        assert_eq!(Class::ClientError.name(), "Client error");
        assert_eq!(Class::ServerError.name(), "Server error");
    }

    #[test]
    fn render_explain_429() {
        let text = render_explain(&lookup(429).unwrap());
        assert!(text.starts_with("429 Too Many Requests (4xx Client error)\n"));
        assert!(text.contains("Too Many Requests"));
        assert!(text.contains("Retry-After"));
        assert!(text.contains("\nMeaning: "));
        assert!(text.contains("\nTypical causes:\n  - "));
        assert!(text.contains("\nHow to fix:\n  - "));
        assert!(text.contains("\nRetry: backoff — "));
    }

    #[test]
    fn render_explain_unregistered() {
        let text = render_explain(&lookup(299).unwrap());
        assert!(text.starts_with("299 Unregistered status code (2xx Success)\n"));
        assert!(text.contains("not in the IANA registry"));
        assert!(text.contains("like 200"));
        assert!(text.contains(Class::Success.meaning()));
        let text = render_explain(&lookup(599).unwrap());
        assert!(text.contains("like 500"));
        assert!(text.contains("Retry: idempotent_only — "));
    }

    #[test]
    fn render_explain_every_code() {
        for code in 100..=599 {
            let info = lookup(code).unwrap();
            let text = render_explain(&info);
            assert!(text.starts_with(&format!("{code} ")), "{code}");
            assert!(text.ends_with('\n'));
            for item in info.causes.iter().chain(info.fix) {
                assert!(text.contains(item), "{code}: {item}");
            }
        }
    }

    #[test]
    fn api_integration_details() {
        let text = |code| render_explain(&lookup(code).unwrap());
        assert!(text(401).contains("token"));
        assert!(text(429).contains("backoff"));
        assert!(text(429).contains("jitter"));
        assert!(text(500).contains("idempotent"));
        for code in [502, 503, 504] {
            assert!(text(code).contains("statuslens"), "{code}");
        }
        let info = lookup(499).unwrap();
        assert!(info.registered);
        assert!(info.meaning.contains("non-standard"));
        assert!(text(499).contains("statuslens"));
    }
}
