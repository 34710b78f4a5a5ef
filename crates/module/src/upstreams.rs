//! Finding the running configuration's upstreams and their zoned peer lists, without a request:
//! through `ngx_cycle`, so the API works in timers and `init_worker_by_lua*` too.

use core::fmt;
use core::slice;

use crate::bytes;
use dynamic_upstream_core::target::{self, TargetError};
use nginx_sys::{
    ngx_cycle, ngx_http_conf_ctx_t, ngx_http_module, ngx_http_upstream_main_conf_t,
    ngx_http_upstream_module, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    NGX_HTTP_UPSTREAM_CREATE,
};

/// Why a call found nothing to work on.
pub enum LookupError {
    Target(TargetError),
    /// The zone exists in the configuration but its shared memory is not set up (yet).
    ZoneNotReady(Vec<u8>),
    /// There is no http configuration in the running cycle.
    NoHttp,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::Target(e) => e.fmt(f),
            LookupError::ZoneNotReady(name) => write!(
                f,
                "upstream zone \"{}\" is not ready: it is set up when the workers start",
                target::echo(name)
            ),
            LookupError::NoHttp => f.write_str("nginx has no http upstreams configured"),
        }
    }
}

/// The explicit `upstream {}` blocks of the running cycle (not the implicit upstreams nginx makes
/// for `proxy_pass http://host:port`).
pub struct Upstreams {
    /// The cycle's upstreams, implicit ones included (filtered when read).
    all: &'static [*mut ngx_http_upstream_srv_conf_t],
}

/// An upstream whose peers live in a ready shared zone. Its strings belong to the running
/// configuration, which outlives every API call.
pub struct ZonedUpstream {
    pub conf: *mut ngx_http_upstream_srv_conf_t,
    pub name: &'static [u8],
    pub zone: &'static [u8],
    pub zone_size: usize,
    /// The primary peers list in the zone; `next` is the backup list.
    pub peers: *mut ngx_http_upstream_rr_peers_t,
}

impl ZonedUpstream {
    /// The upstream's name as error messages show it.
    pub fn name_text(&self) -> String {
        target::echo(self.name).to_string()
    }

    /// The zone's name as error messages show it.
    pub fn zone_text(&self) -> String {
        target::echo(self.zone).to_string()
    }
}

impl Upstreams {
    /// Reads the running cycle's upstream configuration.
    ///
    /// # Safety
    /// Must be called from an nginx process while `ngx_cycle` is fully configured (a worker, or
    /// the single process), and the result must not outlive that cycle.
    pub unsafe fn current() -> Result<Self, LookupError> {
        // SAFETY: the caller guarantees a configured cycle; every pointer below is checked for
        // NULL before use and belongs to that cycle's configuration.
        unsafe {
            let cycle = ngx_cycle;
            if cycle.is_null() || (*cycle).conf_ctx.is_null() {
                return Err(LookupError::NoHttp);
            }
            let http = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
            if http.is_null() {
                return Err(LookupError::NoHttp);
            }
            let umcf = *(*http).main_conf.add(ngx_http_upstream_module.ctx_index)
                as *mut ngx_http_upstream_main_conf_t;
            if umcf.is_null() || (*umcf).upstreams.elts.is_null() {
                return Err(LookupError::NoHttp);
            }
            let all = slice::from_raw_parts(
                (*umcf).upstreams.elts as *const *mut ngx_http_upstream_srv_conf_t,
                (*umcf).upstreams.nelts,
            );
            Ok(Upstreams { all })
        }
    }

    /// The explicit `upstream {}` blocks with their name and zone, in configuration order.
    fn explicit(
        &self,
    ) -> impl Iterator<Item = (*mut ngx_http_upstream_srv_conf_t, target::Upstream<'static>)> + Clone
    {
        self.all.iter().copied().filter_map(|u| {
            // SAFETY: `u` is NULL or a live upstream configuration (see `current`); its host and
            // zone name strings live as long as the cycle.
            unsafe {
                if u.is_null() || (*u).flags & NGX_HTTP_UPSTREAM_CREATE as usize == 0 {
                    return None;
                }
                let name = bytes::ngx_str(&(*u).host);
                let zone = (*u).shm_zone.as_ref().map(|z| bytes::ngx_str(&z.shm.name));
                Some((u, target::Upstream { name, zone }))
            }
        })
    }

    /// Name and zone of every upstream, in configuration order.
    pub fn entries(&self) -> impl Iterator<Item = target::Upstream<'static>> + Clone {
        self.explicit().map(|(_, entry)| entry)
    }

    /// The zoned upstream a Lua `target` names.
    pub fn resolve(&self, name: &[u8]) -> Result<ZonedUpstream, LookupError> {
        let i = target::resolve(self.entries(), name).map_err(LookupError::Target)?;
        let Some((conf, entry)) = self.explicit().nth(i) else {
            return Err(LookupError::NoHttp);
        };
        let zone_name = entry.zone.unwrap_or_default();
        // SAFETY: `conf` is live; `resolve` only returns upstreams with a zone. The zone module
        // replaces `peer.data` with the peers list it copied into the zone, whose `shpool` is then
        // the zone's own address; before that (in the master) `shpool` is NULL.
        unsafe {
            let zone = &*(*conf).shm_zone;
            let peers = (*conf).peer.data as *mut ngx_http_upstream_rr_peers_t;
            if peers.is_null()
                || zone.shm.addr.is_null()
                || (*peers).shpool.cast::<u8>() != zone.shm.addr
            {
                return Err(LookupError::ZoneNotReady(zone_name.to_vec()));
            }
            Ok(ZonedUpstream {
                conf,
                name: entry.name,
                zone: zone_name,
                zone_size: zone.shm.size,
                peers,
            })
        }
    }
}
