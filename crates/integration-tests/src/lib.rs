//! Integration harness for lua-dynamic-upstream: real nginx, real HTTP, real backends.
//!
//! Test::Nginx cannot be installed on the project's machines, so this crate plays its part in
//! Rust, in the same data-driven spirit: a config, a request, the expected response, and an
//! error log that is checked at the end of every test.
//!
//! - [`Config`] builds an nginx configuration (modules, main-context lines, an `http {}` body)
//!   in a fresh prefix directory and [`Config::start`]s it as an [`Nginx`], or checks it with
//!   `nginx -t` ([`Config::check`]).
//!   A running [`Nginx`] can [`Nginx::reload`] (or [`Nginx::try_reload`] a configuration that
//!   may be refused), take a new configuration file ([`Nginx::rewrite_config`]) and
//!   [`Nginx::restart`] (stop and start with the same prefix, configuration and ports).
//! - [`Backend`] is a keep-alive HTTP/1.1 server on loopback to proxy to.
//! - [`Load`] sends requests from many keep-alive clients at once, bounded by count and time
//!   ([`Load::start_retrying_closed_keepalive`] resends, as HTTP clients do, a request whose
//!   reused connection an exiting worker closed before answering: for loads across reloads).
//! - [`lua_server`] wraps a Lua snippet into a `location = /t` for [`Nginx::get_ok`].
//! - [`eval_server`] runs each Lua snippet posted to `/eval` ([`Nginx::eval`]), with helpers to
//!   print results and zone states ([`EVAL_PRELUDE`]) and [`ExpectedPeer`] to build expected
//!   `describe_zone` output: many API calls against one nginx, each in its own request.
//!
//! Where nginx, our module and the lua modules live comes from the environment ([`Settings`]),
//! so the same tests run against Debian's nginx and a project-built one; [`modern`] tells whether
//! that nginx is 1.27.3 or newer (peer refs and the configuration counter), and
//! [`Settings::nginx_version`] which version it is.

mod api;
mod backend;
mod dns;
mod http;
mod load;
mod lua;
mod nginx;
mod ports;
mod process;
mod settings;

pub use api::{eval_server, parse_show, post, Evaluated, ExpectedPeer, EVAL_CHUNK, EVAL_PRELUDE};
pub use backend::Backend;
pub use dns::Dns;
pub use http::{get, read_response, Headers, Response};
pub use load::{Failure, Load, LoadReport, LoadSpec};
pub use lua::{lua_server, LUA_SHOW};
pub use nginx::{Config, Module, Nginx};
pub use ports::free_ports;
pub use settings::{modern, settings, NginxVersion, Settings};
