# lua-dynamic-upstream — build, demo and test entry points. See README.md.
#
#   make demo   install what is missing, build, start a demo nginx on 127.0.0.1:8080
#   make test   install what is missing, build, lint, run every test on both nginx builds
#               (Debian's 1.22 and nginx 1.28), plus the AddressSanitizer runs on both
#   make integration / integration-1.28   the integration tests on one build
#   make asan / asan-1.28   the integration tests with an AddressSanitizer build of the module
#   make lint   rustfmt, and clippy with the bindings of both builds (lint-1.28: 1.28 alone)
#   make nginx-1.28   build nginx 1.28 with the lua and ndk modules under build/nginx-1.28
#   make module-1.28  build the module for that nginx (build/nginx-1.28/modules/)

NGINX          ?= /usr/sbin/nginx
# Never in the recipes' environment: nginx reads NGINX as its inherited listening sockets.
unexport NGINX
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
NGINX_128        := $(NGINX_128_PREFIX)/sbin/nginx
# What cargo needs to build against 1.28 (overriding the exported NGINX_BUILD_DIR of 1.22).
CARGO_128_ENV    := NGINX_BUILD_DIR=$(abspath $(NGINX_128_TREE))/objs CARGO_TARGET_DIR=target/nginx-1.28

# Each integration or ASan run prints a banner and its result per build (scripts/section.sh), and
# runs every test binary even when one fails (--no-fail-fast), so the log lists all failures.
SECTION := scripts/section.sh

# The steps of `make test`, in order; each runs even when an earlier one failed, and the summary
# at the end gives each step's result.
TEST_STEPS := module lint unit integration integration-1.28 asan asan-1.28

.PHONY: all deps nginx-tree module demo demo-stop test unit integration integration-1.28 \
	lint lint-1.28 asan asan-1.28 clean nginx-1.28 module-1.28 bench bench-1.28

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

# Packages first, in a make of its own: the steps' makes then read the installed nginx's version.
test:
	@scripts/install-deps.sh
	@summary=$$(mktemp /tmp/dynup-test.XXXXXX); failed=; \
	for step in $(TEST_STEPS); do \
		echo "==== make $$step ===="; started=$$(date +%s); \
		if DYNUP_SUMMARY=$$summary $(MAKE) --no-print-directory $$step; then result=passed; \
		else result=FAILED; failed="$$failed $$step"; fi; \
		echo "make $$step: $$result ($$(( $$(date +%s) - started )) s)" >>$$summary; \
	done; \
	echo "==== make test summary ===="; sed 's/^/  /' $$summary; rm -f $$summary; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi; \
	echo "make test: all passed"

unit:
	$(CARGO) test -p dynamic-upstream-core

integration: module
	@DYNUP_NGINX=$(NGINX) DYNUP_MODULE=$(abspath $(MODULE)) \
		$(SECTION) "integration tests" $(NGINX) \
		$(CARGO) test -p integration-tests --no-fail-fast -- --test-threads=4

# The same tests on nginx 1.28 (absolute paths: the tests run nginx from their own directories).
integration-1.28: module-1.28
	@DYNUP_NGINX=$(abspath $(NGINX_128)) DYNUP_MODULE=$(abspath $(MODULE_128)) \
		DYNUP_LUA_MODULES_DIR=$(abspath $(NGINX_128_PREFIX))/modules \
		DYNUP_LUA_PACKAGE_PATH="/usr/share/lua/5.1/?.lua;;" \
		$(SECTION) "integration tests" $(abspath $(NGINX_128)) \
		$(CARGO) test -p integration-tests --no-fail-fast -- --test-threads=4

# clippy with both builds' bindings: the module has code for nginx >= 1.27.3 only
# (#[cfg(ngx_peer_refs)]) and code for the older ones.
lint: nginx-tree nginx-1.28
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO_128_ENV) $(CARGO) clippy -p ngx-http-lua-dynamic-upstream --all-targets -- -D warnings

lint-1.28: deps nginx-1.28
	$(CARGO_128_ENV) $(CARGO) clippy -p ngx-http-lua-dynamic-upstream --all-targets -- -D warnings

# The integration tests with an AddressSanitizer build of the module (see scripts/asan.sh).
asan: nginx-tree
	@DYNUP_NGINX=$(NGINX) $(SECTION) "ASan integration tests" $(NGINX) scripts/asan.sh 1.22

asan-1.28: deps nginx-1.28
	@$(SECTION) "ASan integration tests" $(abspath $(NGINX_128)) scripts/asan.sh 1.28

nginx-1.28:
	@scripts/build-nginx-1.28.sh

module-1.28: deps nginx-1.28
	$(CARGO_128_ENV) $(CARGO) build --release -p ngx-http-lua-dynamic-upstream
	@cp target/nginx-1.28/release/libngx_http_lua_dynamic_upstream_module.so $(MODULE_128).tmp
	@mv -f $(MODULE_128).tmp $(MODULE_128)
	@echo "built $(MODULE_128) for $$($(NGINX_128) -v 2>&1)"

# Benchmarks against plain nginx on loopback (about 10 minutes, at most 14): installs wrk if
# missing, writes build/bench/results.json and docs/benchmarks.md with its plot (scripts/bench.sh).
bench: module
	DYNUP_NGINX="$${DYNUP_NGINX:-$(NGINX)}" DYNUP_MODULE="$${DYNUP_MODULE:-$(abspath $(MODULE))}" \
		CARGO=$(CARGO) scripts/bench.sh

# The same benchmarks on nginx 1.28 (docs/benchmarks-nginx-1.28.md, build/benchmarks-nginx-1.28/).
bench-1.28: module-1.28
	DYNUP_NGINX=$(abspath $(NGINX_128)) DYNUP_MODULE=$(abspath $(MODULE_128)) \
		DYNUP_LUA_MODULES_DIR=$(abspath $(NGINX_128_PREFIX))/modules \
		DYNUP_LUA_PACKAGE_PATH="/usr/share/lua/5.1/?.lua;;" \
		DYNUP_BENCH_NAME=benchmarks-nginx-1.28 DYNUP_BENCH_COMMAND="make bench-1.28" \
		CARGO=$(CARGO) scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf build
