//! Service adapters: what sits between "the agent's channel is open" and "bytes flow" for each
//! service a viewer reaches through `ws_url`.

pub mod rdp;
