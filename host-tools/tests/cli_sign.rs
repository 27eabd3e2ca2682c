//! `keygen`, `repair --sign`, `inspect --key` and `eval --patch --key` end to end on real
//! data: the proven repair of ACAS Xu N2,1 for property 2, signed by a fresh key; the
//! right key accepts it, another key and an unsigned patch are refused with exit 2.

mod common;

use common::{host, s, scratch, stderr};
use prorepair_host::require_data;
use prorepair_host::testing::acasxu_onnx;

#[test]
fn keygen_sign_inspect_and_eval_with_a_key() {
    let onnx = require_data!(&acasxu_onnx(2, 1));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let dir = scratch("cli_sign", "flow");
    let key = dir.join("vendor.key");
    let o = host(&["keygen", "--out", s(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let public = dir.join("vendor.key.pub");
    let public_text = std::fs::read_to_string(&public).unwrap();
    assert!(public_text.starts_with("prorepair-ed25519-public-v1\n"));
    let key_hex = public_text.lines().nth(1).unwrap().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten without --force.
    let before = std::fs::read(&key).unwrap();
    let o = host(&["keygen", "--out", s(&key)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // A missing key fails before the repair runs.
    let o = host(&[
        "repair",
        s(&onnx),
        "--spec",
        s(&spec),
        "--out",
        s(&dir.join("x.patch")),
        "--sign",
        s(&dir.join("missing.key")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.key"), "{}", stderr(&o));

    let signed = dir.join("fix.patch");
    let unsigned = dir.join("unsigned.patch");
    for (out, sign) in [(&signed, true), (&unsigned, false)] {
        let mut args = vec!["repair", s(&onnx), "--spec", s(&spec), "--out", s(out)];
        if sign {
            args.extend(["--sign", s(&key)]);
        }
        let o = host(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }

    // inspect: kind and, with the key, the verified signer.
    let o = host(&["inspect", s(&signed)]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(text.contains("signature     ed25519"), "{text}");
    assert!(text.contains("not checked"), "{text}");
    let fingerprint = {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap();
        }
        prorepair_host::patch::sign::fingerprint(&k)
    };
    assert!(
        text.contains(&format!("signer        key {fingerprint}")),
        "{text}"
    );
    let o = host(&["inspect", s(&signed), "--key", s(&public), "--json", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["signature"], "ed25519");
    assert_eq!(info["signer"], fingerprint.as_str());
    assert_eq!(info["verified_with"], key_hex.as_str());
    let other = dir.join("other.key");
    assert!(host(&["keygen", "--out", s(&other)]).status.success());
    let other_pub = dir.join("other.key.pub");
    let o = host(&["inspect", s(&signed), "--key", s(&other_pub)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad signature"), "{}", stderr(&o));
    let o = host(&["inspect", s(&unsigned), "--key", s(&public)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unsigned"), "{}", stderr(&o));
    // A secret key file is not a public key file.
    let o = host(&["inspect", s(&signed), "--key", s(&key)]);
    assert_eq!(o.status.code(), Some(2));

    // eval on the device blob: with the right key the outputs are the patched ones.
    let blob = dir.join("base.bin");
    assert!(
        host(&["compile", s(&onnx), "--out", s(&blob)])
            .status
            .success()
    );
    let inputs = dir.join("in.csv");
    std::fs::write(&inputs, "0.64,0.0,0.0,0.475,-0.475\n0.1,0.2,-0.3,0.0,0.1\n").unwrap();
    let eval = |patch: &std::path::Path, key: Option<&std::path::Path>| {
        let mut args = vec![
            "eval",
            s(&blob),
            "--inputs",
            s(&inputs),
            "--patch",
            s(patch),
        ];
        if let Some(k) = key {
            args.extend(["--key", s(k)]);
        }
        host(&args)
    };
    let plain = eval(&signed, None);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let keyed = eval(&signed, Some(&public));
    assert!(keyed.status.success(), "{}", stderr(&keyed));
    assert_eq!(keyed.stdout, plain.stdout);
    let base = host(&["eval", s(&blob), "--inputs", s(&inputs)]);
    assert_ne!(base.stdout, keyed.stdout, "the patch changes nothing");
    for (patch, k, why) in [
        (&signed, &other_pub, "bad signature"),
        (&unsigned, &public, "unsigned"),
    ] {
        let o = eval(patch, Some(k));
        assert_eq!(o.status.code(), Some(2), "{why}");
        let err = stderr(&o);
        assert!(err.contains(why) && err.contains(s(patch)), "{err}");
    }
}
