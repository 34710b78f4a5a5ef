//! nginx glue of lua-dynamic-upstream: the module definition, the `ngx.dynamic` Lua preloader and
//! the functions the embedded Lua wrapper calls through LuaJIT's FFI.
//!
//! Everything that does not need nginx lives in the `dynamic-upstream-core` crate; this crate
//! only reads nginx's structures (under nginx's own locks) and hands the facts to it.

mod balancer;
mod bytes;
mod conf;
mod ffi;
mod index;
mod locks;
mod log;
mod lua;
mod output;
mod peers;
mod request;
mod slab;
mod state_file;
mod upstreams;

use core::ffi::c_char;
use core::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t,
    NGX_CONF_TAKE1, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF_OFFSET, NGX_HTTP_UPS_CONF,
};

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(preconfiguration),
    postconfiguration: Some(conf::postconfiguration),
    create_main_conf: None,
    init_main_conf: Some(state_file::init_main_conf),
    create_srv_conf: Some(conf::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: None,
    merge_loc_conf: None,
};

static mut COMMANDS: [ngx_command_t; 3] = [
    ngx_command_t {
        name: ngx::ngx_string!("dynamic_state_file"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(state_file::set_state_file),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx::ngx_string!("dynamic_config_counter"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_config_counter),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

// The tables `load_module` looks for in a dynamic module. The order puts this module before
// ngx_http_upstream_module, so that its init_main_conf (which puts state-file servers in place)
// runs before nginx builds the upstreams' peer lists.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx_module_t; 2] =
    [&raw const ngx_http_lua_dynamic_upstream_module, ptr::null()];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const c_char; 2] =
    [c"ngx_http_lua_dynamic_upstream_module".as_ptr(), ptr::null()];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const c_char; 3] = [
    c"ngx_http_lua_dynamic_upstream_module".as_ptr(),
    c"ngx_http_upstream_module".as_ptr(),
    ptr::null(),
];

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_lua_dynamic_upstream_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as _,
    commands: &raw mut COMMANDS as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(conf::init_module),
    ..ngx_module_t::default()
};

/// Registers `require "ngx.dynamic"` with lua-nginx-module. This must happen in preconfiguration:
/// by postconfiguration the Lua VM exists and `init_by_lua` has already run.
extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls preconfiguration with the valid configuration being parsed.
    let cf = unsafe { &mut *cf };
    lua::register_preload(cf);
    // A missing Lua module is reported and tolerated: nginx serves on without the API.
    nginx_sys::NGX_OK as ngx_int_t
}
