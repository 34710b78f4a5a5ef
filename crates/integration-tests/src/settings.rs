//! Where the binaries under test live, read once from the environment, and which nginx version
//! that is.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    /// The version of `nginx`, from its `nginx -v` (run once, when the settings are first read).
    pub nginx_version: NginxVersion,
}

/// An nginx version as `nginx -v` prints it: `nginx version: nginx/1.28.3`, or
/// `nginx version: openresty/1.25.3.1` (whose nginx is 1.25.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxVersion {
    /// What comes before the `/`: `nginx`, `openresty`...
    pub product: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl NginxVersion {
    /// The first version whose peers have refs and a zombie flag and whose peer lists have a
    /// configuration counter (nginx 1.27.3): the module's modern mode.
    pub const MODERN: (u32, u32, u32) = (1, 27, 3);

    /// Parses the output of `nginx -v` (nginx prints it to stderr).
    pub fn parse(output: &str) -> Result<Self, String> {
        let fail = |why: &str| format!("{why} in nginx -v output {output:?}");
        let rest =
            output.split_once("nginx version:").ok_or_else(|| fail("no \"nginx version:\""))?.1;
        let word = rest.split_whitespace().next().ok_or_else(|| fail("no version"))?;
        let (product, number) = word.split_once('/').ok_or_else(|| fail("no product/version"))?;
        // Each part's leading digits: `1.29.0-dev`, `1.25.3.1` (openresty: nginx 1.25.3).
        let mut parts = number.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().map_err(|_| fail("a version part that is not a number"))
        });
        let mut next = || parts.next().unwrap_or_else(|| Err(fail("fewer than 3 version parts")));
        Ok(NginxVersion {
            product: product.to_string(),
            major: next()?,
            minor: next()?,
            patch: next()?,
        })
    }

    /// Runs `nginx -v` and parses what it prints.
    pub fn of(nginx: &Path) -> Result<Self, String> {
        let output = Command::new(nginx)
            .arg("-v")
            .output()
            .map_err(|e| format!("run {} -v: {e}", nginx.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        Self::parse(&text).map_err(|e| format!("{}: {e}", nginx.display()))
    }

    /// `(major, minor, patch)`, for comparisons: `v.number() >= (1, 27, 3)`.
    pub fn number(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.patch)
    }

    /// Whether this nginx is 1.27.3 or newer ([`Self::MODERN`]).
    pub fn modern(&self) -> bool {
        self.number() >= Self::MODERN
    }
}

/// `1.28.3`, the nginx version alone (`nginx -v`'s words are in [`NginxVersion::product`]).
impl fmt::Display for NginxVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether the nginx under test is 1.27.3 or newer: peers with refs and a zombie flag, lists with
/// a configuration counter, so the module runs in its modern mode.
pub fn modern() -> bool {
    settings().nginx_version.modern()
}

/// The settings of this test run.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let path = |var: &str, default: PathBuf| env::var_os(var).map_or(default, PathBuf::from);
        let nginx = path("DYNUP_NGINX", "/usr/sbin/nginx".into());
        let nginx_version = NginxVersion::of(&nginx).unwrap_or_else(|e| panic!("{e}"));
        Settings {
            nginx,
            module: path(
                "DYNUP_MODULE",
                workspace.join("build/ngx_http_lua_dynamic_upstream_module.so"),
            ),
            lua_modules_dir: path("DYNUP_LUA_MODULES_DIR", "/usr/lib/nginx/modules".into()),
            lua_package_path: env::var("DYNUP_LUA_PACKAGE_PATH").ok().filter(|p| !p.is_empty()),
            preload: env::var_os("DYNUP_NGINX_PRELOAD")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            nginx_version,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::NginxVersion;

    fn version(output: &str) -> NginxVersion {
        NginxVersion::parse(output).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_nginx_and_openresty() {
        let debian = version("nginx version: nginx/1.22.1\n");
        assert_eq!((debian.product.as_str(), debian.number()), ("nginx", (1, 22, 1)));
        assert_eq!(debian.to_string(), "1.22.1");
        assert!(!debian.modern());

        let built = version("nginx version: nginx/1.28.3\n");
        assert_eq!(built.number(), (1, 28, 3));
        assert!(built.modern());

        let openresty = version("nginx version: openresty/1.25.3.1\n");
        assert_eq!((openresty.product.as_str(), openresty.number()), ("openresty", (1, 25, 3)));
        assert!(!openresty.modern());

        // Distributions' suffixes, a dev build, and what may come before the line.
        assert_eq!(version("nginx version: nginx/1.24.0 (Ubuntu)").number(), (1, 24, 0));
        assert_eq!(version("nginx version: nginx/1.29.0-dev").number(), (1, 29, 0));
        assert_eq!(version("warning: x\nnginx version: nginx/1.27.3\n").number(), (1, 27, 3));
    }

    #[test]
    fn modern_starts_at_1_27_3() {
        let at = |v: &str| version(&format!("nginx version: nginx/{v}")).modern();
        assert!(!at("1.27.2"));
        assert!(at("1.27.3"));
        assert!(at("1.27.10"));
        assert!(!at("1.9.15"));
        assert!(at("2.0.0"));
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in [
            "",
            "nginx: [alert] could not open error log file",
            "nginx version: nginx",
            "nginx version: nginx/1.28",
            "nginx version: nginx/x.28.3",
        ] {
            assert!(NginxVersion::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
