//! Running Lua snippets in nginx and printing their results in a comparable form.

/// Lua functions that print values as sorted, typed lines, so a test compares a whole response
/// body with an expected text (pairs() order is not stable; types matter: `true` is not
/// `"true"`). Defined before every [`lua_server`] snippet.
///
/// - `show(v)`: a scalar prints as `<type> <value>`; a table prints one line per leaf,
///   `<key path>: <type> <value>`, keys sorted (numbers first), nested keys joined by `.`;
///   an empty table prints `{}`. E.g. `show({ "a", { w = 1 } })` prints
///   `1: string a` and `2.w: number 1`.
/// - `show_result(v, err)`: `show(v)`, or `nil, <type of err> <err>` when `v` is nil: the
///   `nil, err` convention of the API.
pub const LUA_SHOW: &str = r#"
local function show(v, path)
    local label = path and (path .. ": ") or ""
    if type(v) ~= "table" then
        ngx.say(label, type(v), " ", tostring(v))
        return
    end
    local keys = {}
    for k in pairs(v) do
        keys[#keys + 1] = k
    end
    if #keys == 0 then
        ngx.say(label, "{}")
        return
    end
    table.sort(keys, function(a, b)
        if type(a) ~= type(b) then
            return type(a) == "number"
        end
        return a < b
    end)
    for _, k in ipairs(keys) do
        show(v[k], path and (path .. "." .. tostring(k)) or tostring(k))
    end
end

local function show_result(v, err)
    if v == nil then
        ngx.say("nil, ", type(err), " ", tostring(err))
    else
        show(v)
    end
end
"#;

/// A `server` on the harness port whose `location = /t` runs `lua` (after [`LUA_SHOW`]) in
/// `content_by_lua_block`: a test then compares `nginx.get_ok("/t")` with what `lua` says.
pub fn lua_server(lua: &str) -> String {
    format!(
        "server {{
    listen 127.0.0.1:%%PORT%%;
    location = /t {{
        default_type text/plain;
        content_by_lua_block {{
{LUA_SHOW}
{lua}
        }}
    }}
}}
"
    )
}
