//! Memory: what a peer costs in its upstream's zone, how many fit, and whether churn gives the
//! memory back. Figures come from `zone_usage`, which counts the slab allocator's free pages.

use integration_tests::get;
use serde::Serialize;

use crate::server::{Modules, Server, Spec};
use crate::Budget;

/// Peers added to measure the bytes one takes.
pub const PER_PEER_SAMPLE: usize = 1000;
/// Changes of the churn check.
pub const CHURN_CHANGES: usize = 100_000;

#[derive(Debug, Serialize)]
pub struct Memory {
    /// Zone bytes one added peer takes (free bytes before minus after adding
    /// [`PER_PEER_SAMPLE`] peers, divided by their number).
    pub bytes_per_peer: f64,
    /// The address form of the added peers (a peer's name is stored with it).
    pub address_example: String,
    pub fill_1m: Fill,
    pub fill_16m: Fill,
    pub churn: ChurnCheck,
}

/// Peers added to a zone until `add_peer` refused.
#[derive(Debug, Serialize)]
pub struct Fill {
    pub zone: String,
    /// Peers in the upstream when it refused (its one configured server included).
    pub peers: usize,
    /// Why it refused.
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct ChurnCheck {
    pub changes: usize,
    pub free_before: u64,
    pub free_after: u64,
    /// Refused changes (0 expected).
    pub errors: u64,
}

pub fn run(cpu: Option<usize>, budget: &Budget) -> Memory {
    budget.check("memory");
    let spec = Spec {
        name: "memory",
        modules: Modules::LuaAndDynamic,
        workers: 1,
        cpu,
        ports: 1,
        files: Vec::new(),
    };
    let server = Server::start(&spec, |ports| {
        LUA_MEMORY
            .replace("@PORT@", &ports[0].to_string())
            .replace("@SAMPLE@", &PER_PEER_SAMPLE.to_string())
            .replace("@CHANGES@", &CHURN_CHANGES.to_string())
    });
    let call = |path: &str| -> Vec<String> {
        let response = get(server.port(0), path);
        assert_eq!(response.status, 200, "{path}: {}\n{}", response.body, server.error_log());
        response.body.trim_end().splitn(3, ' ').map(str::to_owned).collect()
    };
    let per_peer = call("/per_peer");
    let fill = |upstream: &str, zone: &str| {
        let answer = call(&format!("/fill?u={upstream}"));
        Fill {
            zone: zone.to_owned(),
            peers: number(&answer[0]) as usize,
            error: answer[1..].join(" "),
        }
    };
    let fill_1m = fill("m1", "1m");
    let fill_16m = fill("m16", "16m");
    let churn = call("/churn");
    server.stop();
    println!("{}  memory done", budget.elapsed());
    Memory {
        bytes_per_peer: number(&per_peer[0]),
        address_example: per_peer[1].clone(),
        fill_1m,
        fill_16m,
        churn: ChurnCheck {
            changes: CHURN_CHANGES,
            free_before: number(&churn[0]) as u64,
            free_after: number(&churn[1]) as u64,
            errors: number(&churn[2]) as u64,
        },
    }
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

const LUA_MEMORY: &str = r#"    upstream m1 {
        zone m1 1m;
        server 127.2.0.1:80;
    }
    upstream m16 {
        zone m16 16m;
        server 127.2.0.1:80;
    }
    upstream sample {
        zone sample 16m;
        server 127.2.0.1:80;
    }
    upstream churn {
        zone churn 1m;
        server 127.2.0.1:80;
        server 127.2.0.2:80;
        server 127.2.0.3:80;
    }

    init_by_lua_block {
        -- Peer i of the added ones: as long a name as a typical 127.0.0.1:<port>.
        package.loaded.bench_peer = function(i)
            return string.format("127.4.%d.%d:8080", math.floor(i / 250), i % 250 + 1)
        end
    }

    server {
        listen 127.0.0.1:@PORT@;
        default_type text/plain;

        # "<bytes per peer> <example address>": free bytes before and after adding SAMPLE peers.
        location = /per_peer {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local peer = require "bench_peer"
                local before = assert(dynamic.zone_usage("sample")).free
                for i = 0, @SAMPLE@ - 1 do
                    assert(dynamic.add_peer("sample", peer(i)))
                end
                local after = assert(dynamic.zone_usage("sample")).free
                ngx.say((before - after) / @SAMPLE@, " ", peer(0))
            }
        }

        # "<peers> <error>": add peers until add_peer refuses.
        location = /fill {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local peer = require "bench_peer"
                local u = ngx.var.arg_u
                local i = 0
                while true do
                    local ok, err = dynamic.add_peer(u, peer(i))
                    if not ok then
                        return ngx.say(#assert(dynamic.describe_zone(u)), " ", err)
                    end
                    i = i + 1
                end
            }
        }

        # "<free before> <free after> <errors>" around CHANGES changes: ten extra peers, each
        # added, marked down, brought up and removed, in turn.
        location = /churn {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local peer = require "bench_peer"
                local before = assert(dynamic.zone_usage("churn")).free
                local errors = 0
                for k = 0, @CHANGES@ - 1 do
                    local server = peer(k % 10)
                    local phase = math.floor(k / 10) % 4
                    local ok
                    if phase == 0 then
                        ok = dynamic.add_peer("churn", server)
                    elseif phase == 1 then
                        ok = dynamic.set_peer_down("churn", server)
                    elseif phase == 2 then
                        ok = dynamic.set_peer_down("churn", server, false)
                    else
                        ok = dynamic.remove_peer("churn", server)
                    end
                    if not ok then
                        errors = errors + 1
                    end
                end
                local after = assert(dynamic.zone_usage("churn")).free
                ngx.say(before, " ", after, " ", errors)
            }
        }
    }
"#;
