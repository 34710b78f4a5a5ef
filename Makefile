# lua-dynamic-upstream — build, demo and test entry points. See README.md.
#
#   make demo   install what is missing, build, start a demo nginx on 127.0.0.1:8080
#   make test   install what is missing, build, lint, run every test
#   make asan   run the integration tests with an AddressSanitizer build of the module
#   make nginx-1.28   build nginx 1.28 with the lua and ndk modules under build/nginx-1.28
#   make module-1.28  build the module for that nginx (build/nginx-1.28/modules/)

NGINX          ?= /usr/sbin/nginx
NGINX_SRC      ?= /usr/share/nginx/src
NGINX_VERSION  := $(shell $(NGINX) -v 2>&1 | sed -n 's|.*nginx/||p')
NGINX_TREE     ?= build/nginx-$(NGINX_VERSION)
MODULE         := build/ngx_http_lua_dynamic_upstream_module.so
CARGO          ?= cargo

export NGINX_BUILD_DIR := $(abspath $(NGINX_TREE))/objs

# nginx 1.28, built from source by scripts/build-nginx-1.28.sh (its own target dir for cargo, so the
# two builds do not invalidate each other's bindings).
NGINX_128_PREFIX := build/nginx-1.28
NGINX_128_TREE   := build/nginx-1.28-src
MODULE_128       := $(NGINX_128_PREFIX)/modules/ngx_http_lua_dynamic_upstream_module.so

.PHONY: all deps nginx-tree module demo demo-stop test unit integration lint asan clean \
	nginx-1.28 module-1.28 bench

all: module

deps:
	@scripts/install-deps.sh

nginx-tree: deps
	@scripts/configure-nginx-tree.sh $(NGINX) $(NGINX_SRC) $(NGINX_TREE)

# cargo decides what to rebuild; the copy is the module path scripts and docs rely on.
module: nginx-tree
	$(CARGO) build --release -p ngx-http-lua-dynamic-upstream
	@mkdir -p build
	@# Replaced by rename, never rewritten in place: a running nginx has the old file mapped.
	@cp target/release/libngx_http_lua_dynamic_upstream_module.so $(MODULE).tmp
	@mv -f $(MODULE).tmp $(MODULE)
	@echo "built $(MODULE) for nginx $(NGINX_VERSION)"

demo: module
	@scripts/demo.sh start

demo-stop:
	@scripts/demo.sh stop

test: module lint unit integration

unit:
	$(CARGO) test -p dynamic-upstream-core

integration: module
	DYNUP_NGINX=$(NGINX) DYNUP_MODULE=$(abspath $(MODULE)) \
		$(CARGO) test -p integration-tests -- --test-threads=4

lint: nginx-tree
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The integration tests with an AddressSanitizer build of the module (see scripts/asan.sh).
asan: nginx-tree
	scripts/asan.sh

nginx-1.28:
	@scripts/build-nginx-1.28.sh

module-1.28: deps nginx-1.28
	NGINX_BUILD_DIR=$(abspath $(NGINX_128_TREE))/objs CARGO_TARGET_DIR=target/nginx-1.28 \
		$(CARGO) build --release -p ngx-http-lua-dynamic-upstream
	@cp target/nginx-1.28/release/libngx_http_lua_dynamic_upstream_module.so $(MODULE_128).tmp
	@mv -f $(MODULE_128).tmp $(MODULE_128)
	@echo "built $(MODULE_128) for $$($(NGINX_128_PREFIX)/sbin/nginx -v 2>&1)"

# Benchmarks against plain nginx on loopback (about 10 minutes, at most 14): installs wrk if
# missing, writes build/bench/results.json and docs/benchmarks.md with its plot (scripts/bench.sh).
bench: module
	DYNUP_NGINX="$${DYNUP_NGINX:-$(NGINX)}" DYNUP_MODULE="$${DYNUP_MODULE:-$(abspath $(MODULE))}" \
		CARGO=$(CARGO) scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf build
