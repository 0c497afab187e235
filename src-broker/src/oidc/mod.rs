//! OpenID Connect sign-in for the console: the checks of the authorization code flow, apart from
//! HTTP routing (see `http::oidc`).
//!
//! [`flow`] holds one sign-in's state (state, nonce, PKCE verifier) in a sealed cookie and maps
//! the person's claims to a name and a role; [`provider`] fetches the discovery document and
//! the keys and redeems the code; [`idtoken`] checks the ID token.

pub(crate) mod flow;
pub(crate) mod idtoken;
pub(crate) mod provider;

pub(crate) use flow::{Flow, person_name, role_of};
pub(crate) use idtoken::Expect;
pub(crate) use provider::Redeem;
