//! Where the binaries under test live, read once from the environment.

use std::env;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The nginx build under test. Every field can be overridden from the environment so that the
/// same tests run against Debian's nginx and a project-built one (whose lua modules and Lua
/// library path differ).
#[derive(Debug)]
pub struct Settings {
    /// `DYNUP_NGINX`: the nginx binary.
    pub nginx: PathBuf,
    /// `DYNUP_MODULE`: our module, as built by `make module`.
    pub module: PathBuf,
    /// `DYNUP_LUA_MODULES_DIR`: holds `ndk_http_module.so` and `ngx_http_lua_module.so`.
    pub lua_modules_dir: PathBuf,
    /// `DYNUP_LUA_PACKAGE_PATH`: the `lua_package_path` written when the lua module is loaded;
    /// `None` (unset or empty) writes none. Debian's lua module needs none: its built-in
    /// `package.path` already starts with `/usr/share/lua/5.1/?.lua`, where lua-resty-core is.
    pub lua_package_path: Option<String>,
    /// `DYNUP_NGINX_PRELOAD`: a library nginx is started with in `LD_PRELOAD` (the
    /// AddressSanitizer runtime under `make asan`).
    pub preload: Option<PathBuf>,
}

/// The settings of this test run.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let path = |var: &str, default: PathBuf| env::var_os(var).map_or(default, PathBuf::from);
        Settings {
            nginx: path("DYNUP_NGINX", "/usr/sbin/nginx".into()),
            module: path(
                "DYNUP_MODULE",
                workspace.join("build/ngx_http_lua_dynamic_upstream_module.so"),
            ),
            lua_modules_dir: path("DYNUP_LUA_MODULES_DIR", "/usr/lib/nginx/modules".into()),
            lua_package_path: env::var("DYNUP_LUA_PACKAGE_PATH").ok().filter(|p| !p.is_empty()),
            preload: env::var_os("DYNUP_NGINX_PRELOAD")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        }
    })
}
