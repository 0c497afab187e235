//! Passerelle broker.
