//! statuslens: a transparent HTTP reverse proxy that counts, explains and flags status codes.
//!
//! The life of a request, one module per phase:
//!
//! 1. [`server`] accepts connections on the proxy listener (HTTP/1.1 and h2c) in one
//!    single-threaded runtime per worker thread, first reading the client an L4 balancer
//!    names in a [`proxy_protocol`] header where configured, [`framing`] watching HTTP/1 bytes for
//!    heads hyper would accept but a proxy must refuse;
//! 2. [`route`] picks the configured route (most specific host + path prefix wins), and
//!    [`trusted`] the client a trusted load balancer's `X-Forwarded-For` names;
//! 3. [`forward`] answers what the proxy must (404, 413, 414, 431, 503) or streams the
//!    request to the route's pooled upstream client, mapping failures to 502/504 —
//!    except plain HTTP/1.1 requests, which [`fastpath`] forwards without
//!    hyper (same routing, same exchange, same answers), handing anything else back;
//!    bodiless requests hyper parsed (h2c, TLS) use the fast path's upstream pools
//!    through [`fastclient`]; hyper's client, for the rest, sees its connections
//!    through [`reuse`], so that it can resend what a closing connection dropped;
//! 4. [`observe`] records each request exactly once when its response ends — into
//!    [`metrics`] (handles resolved at start-up) and the [`access_log`];
//! 5. [`detect`] turns the per-second counts of each route × signal into live spikes;
//! 6. [`admin`] serves `/metrics`, health and the JSON API on a separate listener.
//!
//! [`config`] turns the TOML file and flags into one validated `Config`, and [`status`]
//! knows what every status code means, for `statuslens explain`, the log and the API.
//! [`generation`] holds the state built from one config and swaps it on reload.
//! [`idle`] closes client connections hyper serves once they have had no request for
//! `proxy.header_read_timeout`, or whose HTTP/2 client grants no window for
//! `proxy.send_timeout`; [`send`] gives up on a client that stops reading its response
//! for as long.
//! [`isolate`] turns a panic in one request into that request's 500; [`logsink`] batches
//! log lines for a writer thread; [`iptext`] writes client addresses without `core::fmt`.
//! [`demo`] plays the incidents statuslens exists for against a synthetic API.
#![forbid(unsafe_code)]

/// Implements `AsyncWrite` for a pin-projected `Type<S>` wrapper of a stream `inner`
/// that only watches or replays reads: writes go straight through.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod detect;
pub mod duration;
pub mod fastclient;
pub mod fastpath;
pub mod forward;
pub mod framing;
pub mod generation;
pub mod idle;
pub mod iptext;
pub mod isolate;
pub mod logfmt;
pub mod logsink;
pub mod metrics;
pub mod observe;
pub mod proxy_protocol;
pub mod quota;
pub mod reuse;
pub mod route;
pub mod send;
pub mod server;
pub mod status;
#[cfg(test)]
mod testrng;
pub mod tls;
pub mod trusted;
