use super::*;
use crate::enroll::registry::Entry;
use crate::keys::PrivateKey;

fn name(n: &str) -> Name {
    Name::new(n).unwrap()
}

/// A registry with a site in each state, every one with its token's hash.
fn registry() -> (Registry, Vec<String>) {
    let hashes: Vec<String> = ["ab", "cd", "ef"].iter().map(|h| h.repeat(32)).collect();
    let entry = |n: &str, a: &str, state| Entry {
        name: name(n),
        address: a.parse().unwrap(),
        lan: vec![format!("192.168.{}.0/24", &a[8..]).parse().unwrap()],
        created_at: 1_767_225_600,
        state,
    };
    let mut r = Registry::default();
    r.put(entry(
        "annex-3",
        "10.99.0.4",
        EntryState::Revoked {
            revoked_at: 1_767_230_000,
            secret_hash: Some(hashes[2].clone()),
        },
    ));
    r.put(entry(
        "annex-1",
        "10.99.0.2",
        EntryState::Joined {
            public_key: PrivateKey::generate().public_key(),
            certificate: Fingerprint::from_bytes([1; 32]),
            joined_at: 1_767_226_000,
            secret_hash: Some(hashes[0].clone()),
        },
    ));
    r.put(entry(
        "annex-2",
        "10.99.0.3",
        EntryState::Pending {
            secret_hash: hashes[1].clone(),
            expires: 1_767_312_000,
        },
    ));
    (r, hashes)
}

#[test]
fn a_snapshot_round_trips_by_name_in_every_state() {
    let (r, _) = registry();
    let s = Snapshot::of(&r, 7);
    let names: Vec<&str> = s.sites.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["annex-1", "annex-2", "annex-3"]);
    let states: Vec<&str> = s.sites.iter().map(|x| x.state.as_str()).collect();
    assert_eq!(states, ["joined", "pending", "revoked"]);
    assert_eq!(s.version, 7);
    assert_eq!(s.joined(), 1);
    let back = Snapshot::decode(&s.encode().unwrap()).unwrap();
    assert_eq!(back, s);
    // The joined site installs with the registry's keys.
    let site = back.sites[0].site().unwrap();
    let EntryState::Joined {
        public_key,
        certificate,
        ..
    } = &r.get(&name("annex-1")).unwrap().state
    else {
        panic!()
    };
    assert_eq!(
        (site.public_key, site.certificate),
        (*public_key, Some(*certificate))
    );
    assert_eq!(site.address.to_string(), "10.99.0.2");
    assert!(back.sites[1].site().is_none() && back.sites[2].site().is_none());
}

#[test]
fn no_secret_nor_its_hash_is_in_the_encoding() {
    let (r, hashes) = registry();
    let text = String::from_utf8(Snapshot::of(&r, 1).encode().unwrap()).unwrap();
    for h in &hashes {
        assert!(!text.contains(h.as_str()), "{text}");
    }
    assert!(!text.contains("secret"), "{text}");
    // A snapshot that carries a hash anyway is refused, not kept.
    let with_hash = text.replacen(
        "\"state\":\"pending\"",
        &format!("\"state\":\"pending\",\"secret_hash\":\"{}\"", hashes[1]),
        1,
    );
    assert_ne!(with_hash, text);
    assert!(matches!(
        Snapshot::decode(with_hash.as_bytes()),
        Err(SyncError::Invalid(_))
    ));
}

#[test]
fn a_truncated_snapshot_is_refused_at_every_length() {
    let (r, _) = registry();
    let bytes = Snapshot::of(&r, 1).encode().unwrap();
    for n in 0..bytes.len() {
        let e = Snapshot::decode(&bytes[..n]).unwrap_err();
        assert!(matches!(e, SyncError::Invalid(_)), "{n}: {e}");
    }
}

#[test]
fn too_large_snapshots_and_frames_are_refused_before_parsing() {
    let big = vec![b' '; MAX_SNAPSHOT + 1];
    assert_eq!(
        Snapshot::decode(&big).unwrap_err(),
        SyncError::TooLarge(MAX_SNAPSHOT + 1)
    );
    assert_eq!(
        frame_len((MAX_SNAPSHOT as u32).to_be_bytes()),
        Ok(MAX_SNAPSHOT)
    );
    assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
    let (r, _) = registry();
    let s = Snapshot::of(&r, 3);
    let frame = s.encode_frame().unwrap();
    let len = frame_len(frame[..FRAME_HEADER].try_into().unwrap()).unwrap();
    assert_eq!(len, frame.len() - FRAME_HEADER);
    assert_eq!(Snapshot::decode(&frame[FRAME_HEADER..]).unwrap(), s);
    // A registry too large to send is refused by the sender too.
    let mut many = Registry::default();
    let joined = r.get(&name("annex-1")).unwrap().clone();
    for i in 0..6000u32 {
        let mut e = joined.clone();
        e.name = name(&format!("annex-{i}"));
        many.put(e);
    }
    assert!(matches!(
        Snapshot::of(&many, 1).encode(),
        Err(SyncError::TooLarge(_))
    ));
}

#[test]
fn another_format_duplicates_and_bad_keys_are_refused() {
    let (r, _) = registry();
    let text = String::from_utf8(Snapshot::of(&r, 1).encode().unwrap()).unwrap();
    let newer = text.replacen("\"format\":1", "\"format\":2", 1);
    assert_eq!(
        Snapshot::decode(newer.as_bytes()),
        Err(SyncError::Format(2))
    );
    let s = Snapshot::of(&r, 1);
    let mut twice = s.clone();
    twice.sites.push(s.sites[0].clone());
    assert_eq!(
        Snapshot::decode(&serde_json::to_vec(&twice).unwrap()),
        Err(SyncError::Duplicate(name("annex-1")))
    );
    // The all-zero key (a low-order point) is no peer's key.
    let SyncedState::Joined { public_key, .. } = &s.sites[0].state else {
        panic!()
    };
    let zero = text.replace(&public_key.to_string(), &format!("{}=", "A".repeat(43)));
    assert!(matches!(
        Snapshot::decode(zero.as_bytes()),
        Err(SyncError::Invalid(_))
    ));
    // Remote text in an error stays short.
    let long = text.replacen("annex-1", &"x".repeat(5000), 1);
    let e = Snapshot::decode(long.as_bytes()).unwrap_err().to_string();
    assert!(e.len() < 300, "{e}");
}
