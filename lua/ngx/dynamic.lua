-- ngx.dynamic: runtime access to nginx upstream zones.
--
-- This file is compiled into ngx_http_lua_dynamic_upstream_module.so and served by
-- `require "ngx.dynamic"`; it is not installed on disk. It only checks arguments, calls the
-- module's functions through LuaJIT's FFI and turns their records into Lua tables. The module
-- takes nginx's locks itself; nothing here runs while a lock is held.

local ffi = require "ffi"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local type = type
local tonumber = tonumber
local get_phase = ngx.get_phase

local ok, new_tab = pcall(require, "table.new")
if not ok then
    new_tab = function() return {} end
end

ffi.cdef [[
typedef struct {
    uint32_t off, len;
} ngx_dynamic_upstream_str_t;

typedef struct {
    ngx_dynamic_upstream_str_t name, zone;
} ngx_dynamic_upstream_upstream_t;

typedef struct {
    ngx_dynamic_upstream_str_t name, server;
    double weight, current_weight, effective_weight, max_fails, fail_timeout,
           fails, max_conns, conns, accessed, checked;
    uint8_t down, backup;
} ngx_dynamic_upstream_peer_t;

int ngx_dynamic_upstream_ffi_list(ngx_dynamic_upstream_upstream_t *items, size_t *n,
    unsigned char *bytes, size_t *bytes_len, unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_describe(const char *target, size_t target_len,
    ngx_dynamic_upstream_peer_t *items, size_t *n,
    unsigned char *bytes, size_t *bytes_len, unsigned char *err, size_t *err_len);
]]

local NGX_OK = 0
local NGX_DECLINED = -5

local ERR_CAP = 512
local err_buf = ffi_new("unsigned char[?]", ERR_CAP)
local err_len = ffi_new("size_t[1]")
local n_inout = ffi_new("size_t[1]")
local bytes_inout = ffi_new("size_t[1]")

-- Result buffers, per record type, kept between calls and grown when the module reports that an
-- answer needs more room (one Lua VM per worker, and calls never yield: sharing them is safe).
local buffers = {
    upstream = { ctype = "ngx_dynamic_upstream_upstream_t[?]", cap = 0, bytes_cap = 0 },
    peer = { ctype = "ngx_dynamic_upstream_peer_t[?]", cap = 0, bytes_cap = 0 },
}

local function grow(buf, items, bytes)
    if items > buf.cap then
        buf.cap = items + items / 4 + 16
        buf.items = ffi_new(buf.ctype, buf.cap)
    end
    if bytes > buf.bytes_cap then
        buf.bytes_cap = bytes + bytes / 4 + 1024
        buf.bytes = ffi_new("unsigned char[?]", buf.bytes_cap)
    end
end

-- Calls `fn(..., items, n, bytes, bytes_len, err, err_len)` until the answer fits.
-- Returns the record count, or nil and the error text.
local function fetch(buf, fn, a, b)
    while true do
        n_inout[0] = buf.cap
        bytes_inout[0] = buf.bytes_cap
        err_len[0] = ERR_CAP
        local rc
        if a then
            rc = fn(a, b, buf.items, n_inout, buf.bytes, bytes_inout, err_buf, err_len)
        else
            rc = fn(buf.items, n_inout, buf.bytes, bytes_inout, err_buf, err_len)
        end
        if rc == NGX_OK then
            return tonumber(n_inout[0])
        end
        if rc ~= NGX_DECLINED then
            return nil, ffi_string(err_buf, err_len[0])
        end
        grow(buf, tonumber(n_inout[0]), tonumber(bytes_inout[0]))
    end
end

local function str(bytes, s)
    return ffi_string(bytes + s.off, s.len)
end

local function check_string(fname, pos, v)
    if type(v) ~= "string" then
        error("bad argument #" .. pos .. " to '" .. fname .. "' (string expected, got "
              .. type(v) .. ")", 3)
    end
end

-- The zones are created when the workers start; init_by_lua runs before that, in the master.
local function not_in_init(fname)
    if get_phase() == "init" then
        return fname .. " is not available in init_by_lua: upstream zones are set up "
               .. "when the workers start (use init_worker_by_lua)"
    end
end

local _M = { version = "0.1.0" }

function _M.list_upstreams()
    local err = not_in_init("list_upstreams")
    if err then
        return nil, err
    end
    local buf = buffers.upstream
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_list)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local list = new_tab(n, 0)
    for i = 0, n - 1 do
        local u = items[i]
        list[i + 1] = { name = str(bytes, u.name), zone = str(bytes, u.zone) }
    end
    return list
end

function _M.list_zones()
    local err = not_in_init("list_zones")
    if err then
        return nil, err
    end
    local buf = buffers.upstream
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_list)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local zones, seen = new_tab(n, 0), {}
    for i = 0, n - 1 do
        local zone = str(bytes, items[i].zone)
        if not seen[zone] then
            seen[zone] = true
            zones[#zones + 1] = zone
        end
    end
    return zones
end

function _M.describe_zone(target)
    check_string("describe_zone", 1, target)
    local err = not_in_init("describe_zone")
    if err then
        return nil, err
    end
    local buf = buffers.peer
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_describe, target, #target)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local peers = new_tab(n, 0)
    for i = 0, n - 1 do
        local p = items[i]
        local peer = new_tab(0, 14)
        peer.name = str(bytes, p.name)
        peer.server = str(bytes, p.server)
        peer.weight = p.weight
        peer.current_weight = p.current_weight
        peer.effective_weight = p.effective_weight
        peer.max_fails = p.max_fails
        peer.fail_timeout = p.fail_timeout
        peer.fails = p.fails
        peer.max_conns = p.max_conns
        peer.conns = p.conns
        peer.accessed = p.accessed
        peer.checked = p.checked
        if p.down ~= 0 then
            peer.down = true
        end
        if p.backup ~= 0 then
            peer.backup = true
        end
        peers[i + 1] = peer
    end
    return peers
end

return _M
