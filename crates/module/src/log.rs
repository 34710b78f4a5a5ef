//! Writing the module's messages to nginx's logs. Messages are passed as a `%*s` argument, so
//! nginx never reads them as a format string.

use nginx_sys::{ngx_conf_log_error, ngx_conf_t, ngx_cycle, ngx_log_error_core, ngx_uint_t};

/// A message about the configuration being parsed; nginx adds the file and line.
pub fn conf(cf: &mut ngx_conf_t, level: u32, msg: &str) {
    // SAFETY: `cf` is the configuration being parsed; the message outlives the call.
    unsafe {
        ngx_conf_log_error(level as ngx_uint_t, cf, 0, c"%*s".as_ptr(), msg.len(), msg.as_ptr());
    }
}

/// A message about the configuration that names its own location: nginx adds none.
pub fn conf_at(cf: &mut ngx_conf_t, level: u32, msg: &str) {
    // SAFETY: `cf->log` is the configuration's log; the message outlives the call.
    unsafe {
        if (*cf.log).log_level >= level as ngx_uint_t {
            ngx_log_error_core(
                level as ngx_uint_t,
                cf.log,
                0,
                c"%*s".as_ptr(),
                msg.len(),
                msg.as_ptr(),
            );
        }
    }
}

/// An error in the running cycle's log.
pub fn error(msg: &str) {
    // SAFETY: a worker's cycle and its log exist while it runs.
    unsafe {
        let cycle = ngx_cycle;
        if cycle.is_null() || (*cycle).log.is_null() {
            return;
        }
        if (*(*cycle).log).log_level >= nginx_sys::NGX_LOG_ERR as ngx_uint_t {
            ngx_log_error_core(
                nginx_sys::NGX_LOG_ERR as ngx_uint_t,
                (*cycle).log,
                0,
                c"%*s".as_ptr(),
                msg.len(),
                msg.as_ptr(),
            );
        }
    }
}
