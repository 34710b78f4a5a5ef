//! Telling an upstream's balancer from its configuration (nginx < 1.27.3 has no flag that says
//! whether a balancer tolerates peer changes).
//!
//! - `hash`, `hash ... consistent`, `ip_hash` and `random` are recognised by their
//!   `init_upstream` handler, whose address is learned by running their directive once on a
//!   scratch upstream ("probing"). (Their own configurations cannot tell: the hash module's is
//!   not zeroed when created.)
//! - `keepalive` wraps the balancer's handler and keeps the original in its configuration;
//! - only round robin and `least_conn` set `NGX_HTTP_UPSTREAM_BACKUP`;
//! - anything else (`balancer_by_lua*`, third-party balancers) is `Other`.
//!
//! The private layouts below mirror `ngx_http_upstream_keepalive_module.c`, the same in nginx
//! 1.22 and 1.28; they are only read, never written.

use core::ffi::{c_void, CStr};
use core::mem::MaybeUninit;
use core::ptr;

use dynamic_upstream_core::balancer::Balancer;
use nginx_sys::{
    ngx_array_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_max_module, ngx_http_upstream_init_pt,
    ngx_http_upstream_init_round_robin, ngx_http_upstream_module, ngx_http_upstream_srv_conf_t,
    ngx_module_t, ngx_queue_t, ngx_str_t, ngx_uint_t, NGX_HTTP_UPSTREAM_BACKUP,
};

/// `ngx_http_upstream_keepalive_srv_conf_t`.
#[repr(C)]
struct KeepaliveConf {
    max_cached: ngx_uint_t,
    requests: ngx_uint_t,
    time: nginx_sys::ngx_msec_t,
    timeout: nginx_sys::ngx_msec_t,
    cache: ngx_queue_t,
    free: ngx_queue_t,
    original_init_upstream: ngx_http_upstream_init_pt,
    original_init_peer: nginx_sys::ngx_http_upstream_init_peer_pt,
}

/// The start of `ngx_http_upstream_keepalive_peer_data_t`: keepalive's per-request data, which
/// keeps the wrapped balancer's.
#[cfg(ngx_peer_refs)]
#[repr(C)]
pub struct KeepalivePeerData {
    conf: *mut c_void,
    upstream: *mut c_void,
    pub data: *mut c_void,
}

/// An upstream's balancer, and whether `keepalive` wraps it.
#[derive(Clone, Copy)]
pub struct Classified {
    pub balancer: Balancer,
    pub keepalive: bool,
}

/// What a configuration's balancer modules look like, learned once per configuration load.
pub struct Probe {
    hash: ngx_http_upstream_init_pt,
    consistent_hash: ngx_http_upstream_init_pt,
    keepalive: Option<(ngx_uint_t, ngx_http_upstream_init_pt)>,
    ip_hash: ngx_http_upstream_init_pt,
    random: ngx_http_upstream_init_pt,
}

/// A module of the configuration being loaded, by name.
fn find_module(cf: &ngx_conf_t, name: &CStr) -> Option<&'static ngx_module_t> {
    // SAFETY: during configuration `cycle->modules` holds `modules_n` valid modules, which live
    // as long as the cycle; each `name` is a static C string.
    unsafe {
        let cycle = &*cf.cycle;
        if cycle.modules.is_null() {
            return None;
        }
        core::slice::from_raw_parts(cycle.modules, cycle.modules_n)
            .iter()
            .filter_map(|&m| m.as_ref())
            .find(|m| !m.name.is_null() && CStr::from_ptr(m.name) == name)
    }
}

/// Runs a balancer directive on a scratch upstream and returns the `init_upstream` handler it
/// installs. The directives probed only store their handler and flags in the upstream (and
/// `keepalive` its size in its own scratch configuration), so nothing real is touched.
///
/// # Safety
/// `cf` must be the http configuration in postconfiguration.
unsafe fn probe(
    cf: &mut ngx_conf_t,
    module: &ngx_module_t,
    args: &[&'static CStr],
) -> ngx_http_upstream_init_pt {
    let directive = args[0];
    // SAFETY: `commands` is the module's static, NULL-name-terminated command table.
    let cmd = unsafe {
        let mut cmd = module.commands;
        loop {
            if cmd.is_null() || (*cmd).name.len == 0 {
                return None;
            }
            if CStr::from_ptr((*cmd).name.data.cast()) == directive {
                break &mut *cmd;
            }
            cmd = cmd.add(1);
        }
    };
    let set = cmd.set?;

    let mut uscf: ngx_http_upstream_srv_conf_t = unsafe {
        // SAFETY: a zeroed upstream configuration is what `ngx_pcalloc` gives nginx's own code.
        MaybeUninit::zeroed().assume_init()
    };
    // SAFETY: `ngx_http_max_module` is set before any http configuration is parsed.
    let max = unsafe { ngx_http_max_module };
    let mut srv_conf = vec![ptr::null_mut::<c_void>(); max];
    // SAFETY: the upstream module's ctx_index is below ngx_http_max_module.
    srv_conf[unsafe { ngx_http_upstream_module.ctx_index }] = (&raw mut uscf).cast();
    // SAFETY: `cf->ctx` is the http configuration context in postconfiguration.
    let http = unsafe { &*(cf.ctx as *const ngx_http_conf_ctx_t) };
    let mut ctx = ngx_http_conf_ctx_t {
        main_conf: http.main_conf,
        srv_conf: srv_conf.as_mut_ptr(),
        loc_conf: http.loc_conf,
    };
    let mut values: Vec<ngx_str_t> = args
        .iter()
        .map(|a| ngx_str_t { len: a.to_bytes().len(), data: a.as_ptr() as *mut u8 })
        .collect();
    let mut arg_array = ngx_array_t {
        elts: values.as_mut_ptr().cast(),
        nelts: values.len(),
        size: core::mem::size_of::<ngx_str_t>(),
        nalloc: values.len(),
        pool: cf.pool,
    };
    // Room for any balancer's own server configuration, zeroed like ngx_pcalloc's.
    let mut scratch_conf = [0u64; 64];

    let (saved_args, saved_ctx) = (cf.args, cf.ctx);
    cf.args = &raw mut arg_array;
    cf.ctx = (&raw mut ctx).cast();
    // SAFETY: the handler is called as nginx calls it, with a context whose upstream
    // configuration is the scratch one, arguments naming the directive, and zeroed memory as its
    // own configuration.
    let rv = unsafe { set(cf, cmd, scratch_conf.as_mut_ptr().cast()) };
    cf.args = saved_args;
    cf.ctx = saved_ctx;

    if rv.is_null() {
        uscf.peer.init_upstream
    } else {
        None
    }
}

impl Probe {
    /// Learns the balancer handlers of the configuration being loaded.
    ///
    /// # Safety
    /// `cf` must be the http configuration in postconfiguration.
    pub unsafe fn run(cf: &mut ngx_conf_t) -> Probe {
        let mut probe_module = |name: &CStr, args: &[&'static CStr]| {
            let module = find_module(cf, name)?;
            // SAFETY: `cf` is the http configuration in postconfiguration (our caller's promise).
            let init = unsafe { probe(cf, module, args) }?;
            Some((module.ctx_index, init))
        };
        let keepalive = probe_module(c"ngx_http_upstream_keepalive_module", &[c"keepalive", c"1"])
            .map(|(index, init)| (index, Some(init)));
        let ip_hash = probe_module(c"ngx_http_upstream_ip_hash_module", &[c"ip_hash"]).map(|p| p.1);
        let random = probe_module(c"ngx_http_upstream_random_module", &[c"random"]).map(|p| p.1);
        // A constant key: compiling it registers no variable.
        let hash_module = c"ngx_http_upstream_hash_module";
        let hash = probe_module(hash_module, &[c"hash", c"k"]).map(|p| p.1);
        let consistent_hash =
            probe_module(hash_module, &[c"hash", c"k", c"consistent"]).map(|p| p.1);
        Probe { hash, consistent_hash, keepalive, ip_hash, random }
    }

    /// The balancer of a configured upstream, after every `init_upstream` handler ran.
    ///
    /// # Safety
    /// `uscf` must be an explicit `upstream {}` configuration of the cycle that was probed.
    pub unsafe fn classify(&self, uscf: &ngx_http_upstream_srv_conf_t) -> Classified {
        // SAFETY: explicit upstreams carry a server configuration for every http module, and the
        // module indexes come from the same cycle.
        let module_conf = |index: ngx_uint_t| unsafe { *uscf.srv_conf.add(index) as *const u8 };

        let mut init = uscf.peer.init_upstream;
        let mut keepalive = false;
        if let Some((index, keepalive_init)) = self.keepalive {
            if same(init, keepalive_init) {
                keepalive = true;
                // SAFETY: keepalive's configuration of this upstream (see the layouts above).
                init = unsafe {
                    (*(module_conf(index) as *const KeepaliveConf)).original_init_upstream
                };
            }
        }

        let balancer = if init.is_none() || same(init, Some(ngx_http_upstream_init_round_robin)) {
            Balancer::RoundRobin
        } else if same(init, self.hash) {
            Balancer::Hash
        } else if same(init, self.consistent_hash) {
            Balancer::ConsistentHash
        } else if same(init, self.ip_hash) {
            Balancer::IpHash
        } else if same(init, self.random) {
            Balancer::Random
        } else if uscf.flags & NGX_HTTP_UPSTREAM_BACKUP as ngx_uint_t != 0 {
            Balancer::LeastConn
        } else {
            Balancer::Other
        };
        Classified { balancer, keepalive }
    }
}

fn same(a: ngx_http_upstream_init_pt, b: ngx_http_upstream_init_pt) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => ptr::fn_addr_eq(a, b),
        _ => false,
    }
}
