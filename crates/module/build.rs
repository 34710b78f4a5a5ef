//! Turns the nginx version and features found by nginx-sys into cfgs, so one source serves every
//! nginx the module is built for.
fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    println!("cargo::rustc-check-cfg=cfg(ngx_feature, values(any()))");
    for feature in std::env::var("DEP_NGINX_FEATURES").unwrap_or_default().split(',') {
        let feature = feature.trim();
        if !feature.is_empty() {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // nginx 1.27.3 gave peers refs/zombie and the lists a configuration counter.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    println!("cargo::rustc-check-cfg=cfg(ngx_peer_refs)");
    let version: u64 =
        std::env::var("DEP_NGINX_VERSION_NUMBER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if version >= 1_027_003 {
        println!("cargo::rustc-cfg=ngx_peer_refs");
    }
}
