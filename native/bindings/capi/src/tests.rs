//! Tests of the C ABI called from Rust, as C would call it. The C programs
//! under `tests/c/` (run by ctest) go through the header itself, including
//! the shared conformance cases.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

use pymesh_core::names::{encode_name_table, Form, NameEntry};

use crate::answer::form_c_str;
use crate::error::{boundary, FfiError};
use crate::*;
use pymesh_status::*;

/// Calls `f` with an error-message slot; returns the status and the message
/// (freed through `pymesh_string_free`, as a C caller would).
fn call(f: impl FnOnce(*mut *mut c_char) -> pymesh_status) -> (pymesh_status, Option<String>) {
    let mut msg: *mut c_char = ptr::null_mut();
    let status = f(&mut msg);
    let text = (!msg.is_null()).then(|| unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned());
    unsafe { pymesh_string_free(msg) };
    (status, text)
}

fn from_json(json: &str, config: Option<&pymesh_name_config>) -> Result<*mut pymesh_name_table, String> {
    let mut table = ptr::null_mut();
    let cfg = config.map_or(ptr::null(), |c| c as *const _);
    let (status, msg) =
        call(|e| unsafe { pymesh_name_table_from_json(json.as_ptr().cast(), json.len(), cfg, &mut table, e) });
    match status {
        PYMESH_OK => {
            assert!(msg.is_none() && !table.is_null());
            Ok(table)
        }
        _ => {
            assert!(table.is_null());
            Err(format!("{status:?}: {}", msg.expect("errors carry a message")))
        }
    }
}

/// (status, canonical, form, search index, addresses as text)
type Looked = (pymesh_status, String, &'static str, i32, Vec<String>);

fn lookup(table: *const pymesh_name_table, name: &[u8]) -> Looked {
    let mut answer = std::mem::MaybeUninit::<pymesh_name_answer>::uninit();
    let mut addrs = [pymesh_ip { family: 0, bytes: [0; 16] }; 8];
    let (status, msg) = call(|e| unsafe {
        pymesh_name_table_lookup(table, name.as_ptr().cast(), name.len(), answer.as_mut_ptr(), addrs.as_mut_ptr(), 8, e)
    });
    assert!(msg.is_none(), "{msg:?}");
    answer_of(status, unsafe { answer.assume_init() }, &addrs)
}

fn answer_of(status: pymesh_status, a: pymesh_name_answer, addrs: &[pymesh_ip]) -> Looked {
    let canonical = unsafe { CStr::from_ptr(a.canonical.as_ptr()) }.to_str().unwrap().to_owned();
    let form = form_c_str(a.form as c_int).unwrap().to_str().unwrap();
    let n = (a.n_ipv4 + a.n_ipv6).min(addrs.len());
    let ips = addrs[..n]
        .iter()
        .map(|ip| match ip.family {
            PYMESH_IPV4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&ip.bytes[..4]).unwrap()).to_string(),
            PYMESH_IPV6 => std::net::Ipv6Addr::from(ip.bytes).to_string(),
            f => panic!("family {f}"),
        })
        .collect();
    (status, canonical, form, a.search_index, ips)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn header_is_up_to_date() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // `with_src` parses lib.rs and follows its `mod`s without running `cargo metadata`.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate the header: {e}"));
    let mut out = Vec::new();
    bindings.write(&mut out);
    let generated = String::from_utf8(out).expect("a UTF-8 header");
    let generated = generated.as_str();
    let committed_path = crate_dir.join("../../include/pymesh.h");
    if std::env::var_os("PYMESH_BLESS_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&committed_path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make header` to generate it", committed_path.display()));
    if committed != generated {
        let line = committed.lines().zip(generated.lines()).take_while(|(a, b)| a == b).count() + 1;
        panic!(
            "native/include/pymesh.h is not the header the C API generates (first difference at line {line}): \
             run `make header` (PYMESH_BLESS_HEADER=1 cargo test -p pymesh-capi header_is_up_to_date) and commit it"
        );
    }
}

#[test]
fn json_table_lookup_fills_the_answer() {
    let search = [c"ns1.svc.cluster.local".as_ptr(), c"cluster.local".as_ptr()];
    let config = pymesh_name_config {
        proxy_namespace: c"ns1".as_ptr(),
        domain: ptr::null(),
        search: search.as_ptr(),
        search_len: search.len(),
    };
    let t = from_json(
        r#"{"table": {"reviews.ns2.svc.cluster.local": {"ips": ["10.96.2.2", "fd00::2", "10.96.2.3"],
            "registry": "Kubernetes", "shortname": "reviews", "namespace": "ns2"},
            "*.example.com": {"ips": ["198.51.100.1"]}}}"#,
        Some(&config),
    )
    .unwrap();
    assert_eq!(unsafe { pymesh_name_table_len(t) }, 2);
    assert_eq!(
        lookup(t, b"Reviews.NS2."),
        (
            PYMESH_OK,
            "reviews.ns2.svc.cluster.local".into(),
            "name.namespace",
            -1,
            strings(&["10.96.2.2", "10.96.2.3", "fd00::2"])
        )
    );
    assert_eq!(lookup(t, b"reviews.ns2.ns1.svc.cluster.local").3, 0);
    assert_eq!(lookup(t, b"a.example.com.cluster.local").1, "a.example.com");
    assert_eq!(lookup(t, b"a.example.com.cluster.local").2, "wildcard");
    assert_eq!(lookup(t, b"a.example.com.cluster.local").3, 1);
    assert_eq!(lookup(t, b"nope.example.org"), (PYMESH_NOT_FOUND, String::new(), "hostname", -1, vec![]));
    unsafe { pymesh_name_table_free(t) };
}

#[test]
fn addresses_are_cut_at_the_capacity_but_counted_in_full() {
    let t = from_json(r#"{"table": {"d.example": {"ips": ["10.0.0.1", "10.0.0.2", "fd00::1"]}}}"#, None).unwrap();
    let mut answer = std::mem::MaybeUninit::<pymesh_name_answer>::uninit();
    let mut addrs = [pymesh_ip { family: 0, bytes: [0xee; 16] }; 3];
    let name = b"d.example";
    let status = unsafe {
        pymesh_name_table_lookup(
            t,
            name.as_ptr().cast(),
            name.len(),
            answer.as_mut_ptr(),
            addrs.as_mut_ptr(),
            1,
            ptr::null_mut(),
        )
    };
    let mut answer = unsafe { answer.assume_init() };
    assert_eq!((status, answer.n_ipv4, answer.n_ipv6), (PYMESH_OK, 2, 1));
    assert_eq!(addrs[0].family, PYMESH_IPV4);
    assert_eq!(&addrs[0].bytes[..], &[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(addrs[1].bytes, [0xee; 16], "written past addrs_cap");
    // No address buffer at all is fine too.
    let status = unsafe {
        pymesh_name_table_lookup(t, name.as_ptr().cast(), name.len(), &mut answer, ptr::null_mut(), 0, ptr::null_mut())
    };
    assert_eq!(status, PYMESH_OK);
    unsafe { pymesh_name_table_free(t) };
}

#[test]
fn builder_builds_and_names_bad_entries() {
    let b = pymesh_name_table_builder_new();
    let ips = [c"10.96.0.20".as_ptr(), c"fd00::20".as_ptr()];
    let add = |host: &CStr, ips: &[*const c_char]| {
        call(|e| unsafe {
            pymesh_name_table_builder_add(
                b,
                host.as_ptr(),
                ips.as_ptr(),
                ips.len(),
                c"Kubernetes".as_ptr(),
                c"product".as_ptr(),
                c"default".as_ptr(),
                e,
            )
        })
    };
    assert_eq!(add(c"product.default.svc.cluster.local", &ips), (PYMESH_OK, None));
    let config = pymesh_name_config {
        proxy_namespace: c"default".as_ptr(),
        domain: c"cluster.local".as_ptr(),
        search: ptr::null(),
        search_len: 0,
    };
    let mut t = ptr::null_mut();
    let (status, msg) = call(|e| unsafe { pymesh_name_table_builder_build(b, &config, &mut t, e) });
    assert_eq!((status, msg), (PYMESH_OK, None));
    let got = lookup(t, b"product");
    assert_eq!((got.0, got.2, got.4), (PYMESH_OK, "name", strings(&["10.96.0.20", "fd00::20"])));
    let mut buf = [0 as c_char; PYMESH_NAME_BUF_LEN];
    let (status, _) = call(|e| unsafe { pymesh_name_table_entry_hostname(t, 0, buf.as_mut_ptr(), buf.len(), e) });
    assert_eq!(status, PYMESH_OK);
    assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }, c"product.default.svc.cluster.local");
    let (status, msg) = call(|e| unsafe { pymesh_name_table_entry_hostname(t, 0, buf.as_mut_ptr(), 10, e) });
    assert_eq!(status, PYMESH_ERR_BUFFER_TOO_SMALL, "{msg:?}");
    let (status, msg) = call(|e| unsafe { pymesh_name_table_entry_hostname(t, 1, buf.as_mut_ptr(), buf.len(), e) });
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
    assert!(msg.unwrap().contains("out of range"));
    unsafe { pymesh_name_table_free(t) };

    // A bad address is accepted by add and named by build; the builder keeps
    // its entries, so the next build fails the same way.
    assert_eq!(add(c"bad.example.com", &[c"10.0.0.300".as_ptr()]), (PYMESH_OK, None));
    for _ in 0..2 {
        let (status, msg) = call(|e| unsafe { pymesh_name_table_builder_build(b, ptr::null(), &mut t, e) });
        assert_eq!(status, PYMESH_ERR_INVALID_ENTRY);
        assert!(msg.unwrap().contains(r#""bad.example.com": ips[0]: "10.0.0.300" is not an IPv4"#));
        assert!(t.is_null());
    }
    // A non-UTF-8 hostname is refused by add.
    let (status, msg) = add(c"caf\xe9.example", &ips);
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
    assert!(msg.unwrap().contains("hostname is not valid UTF-8"));
    unsafe { pymesh_name_table_builder_free(b) };
}

#[test]
fn nds_yaml_and_file_inputs() {
    let entries = [NameEntry::kubernetes("a.b.svc.cluster.local", "a", "b", ["10.0.0.1"])];
    let nds = encode_name_table(&entries);
    let mut t = ptr::null_mut();
    let (status, _) = call(|e| unsafe { pymesh_name_table_from_nds(nds.as_ptr(), nds.len(), ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_OK);
    assert_eq!(lookup(t, b"a.b").1, "a.b.svc.cluster.local");
    unsafe { pymesh_name_table_free(t) };

    let (status, msg) =
        call(|e| unsafe { pymesh_name_table_from_nds([0xff, 0xff].as_ptr(), 2, ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_ERR_PARSE, "{msg:?}");
    assert!(t.is_null());

    let yaml = "table:\n  y.example:\n    ips: [192.0.2.9]\n";
    let (status, _) =
        call(|e| unsafe { pymesh_name_table_from_yaml(yaml.as_ptr().cast(), yaml.len(), ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_OK);
    assert_eq!(lookup(t, b"y.example").4, strings(&["192.0.2.9"]));
    unsafe { pymesh_name_table_free(t) };

    let dir = std::env::temp_dir().join(format!("pymesh-capi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("names.yml");
    std::fs::write(&path, yaml).unwrap();
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let (status, _) = call(|e| unsafe { pymesh_name_table_from_file(cpath.as_ptr(), ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_OK);
    assert_eq!(lookup(t, b"y.example").1, "y.example");
    unsafe { pymesh_name_table_free(t) };
    std::fs::remove_dir_all(&dir).unwrap();
    let (status, msg) = call(|e| unsafe { pymesh_name_table_from_file(cpath.as_ptr(), ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_ERR_IO);
    assert!(msg.unwrap().contains("names.yml"));
}

#[test]
fn errors_have_codes_and_messages() {
    assert!(from_json("{not json", None).unwrap_err().starts_with("PYMESH_ERR_PARSE: <json>:"));
    let bad_domain = pymesh_name_config {
        proxy_namespace: ptr::null(),
        domain: c"a..b".as_ptr(),
        search: ptr::null(),
        search_len: 0,
    };
    assert!(from_json(r#"{"table": {}}"#, Some(&bad_domain)).unwrap_err().starts_with("PYMESH_ERR_INVALID_CONFIG"));
    let missing_search = pymesh_name_config { domain: ptr::null(), search_len: 2, ..bad_domain };
    assert!(from_json(r#"{"table": {}}"#, Some(&missing_search)).unwrap_err().contains("config->search is NULL"));

    // `*out` is cleared before anything else is checked.
    let mut t = ptr::NonNull::<pymesh_name_table>::dangling().as_ptr();
    let (status, msg) = call(|e| unsafe { pymesh_name_table_from_json(ptr::null(), 0, ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
    assert!(msg.unwrap().contains("NULL"));
    assert!(t.is_null());
    let text = b"{\"table\": {\"\xff\": {}}}";
    let (status, _) =
        call(|e| unsafe { pymesh_name_table_from_json(text.as_ptr().cast(), text.len(), ptr::null(), &mut t, e) });
    assert_eq!(status, PYMESH_ERR_PARSE);
    let (status, _) =
        call(|e| unsafe { pymesh_name_table_from_json(c"{}".as_ptr(), 2, ptr::null(), ptr::null_mut(), e) });
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);

    let t = from_json(r#"{"table": {}}"#, None).unwrap();
    let mut answer = std::mem::MaybeUninit::<pymesh_name_answer>::uninit();
    let out = answer.as_mut_ptr();
    let name = b"x\xffy";
    for (table, name, out) in [
        (ptr::null(), name.as_ptr(), out),
        (t.cast_const(), ptr::null(), out),
        (t.cast_const(), name.as_ptr(), ptr::null_mut()),
        (t.cast_const(), name.as_ptr(), out),
    ] {
        let (status, msg) =
            call(|e| unsafe { pymesh_name_table_lookup(table, name.cast(), 3, out, ptr::null_mut(), 0, e) });
        assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
        assert!(!msg.unwrap().is_empty());
    }
    unsafe { pymesh_name_table_free(t) };

    // Free functions and the length accept NULL.
    unsafe {
        pymesh_name_table_free(ptr::null_mut());
        pymesh_name_table_builder_free(ptr::null_mut());
        pymesh_live_name_table_free(ptr::null_mut());
        pymesh_string_free(ptr::null_mut());
        assert_eq!(pymesh_name_table_len(ptr::null()), 0);
        assert_eq!(pymesh_live_name_table_generation(ptr::null()), 0);
    }
}

#[test]
fn a_panic_becomes_a_status_not_an_unwind() {
    let (status, msg) = call(|e| unsafe { boundary(e, || panic!("boom at the boundary")) });
    assert_eq!(status, PYMESH_ERR_PANIC);
    assert!(msg.unwrap().contains("boom at the boundary"));
    // Without a message slot the code alone comes back.
    assert_eq!(
        unsafe { boundary(ptr::null_mut(), || Err(FfiError::invalid_argument("x"))) },
        PYMESH_ERR_INVALID_ARGUMENT
    );
    // Interior NULs in a message are escaped, not truncating.
    let (_, msg) = call(|e| unsafe { boundary(e, || Err(FfiError::invalid_argument("a\0b"))) });
    assert_eq!(msg.unwrap(), "a\\0b");
}

#[test]
fn live_table_swaps_snapshots() {
    let live = pymesh_live_name_table_new();
    let look = |name: &[u8]| {
        let mut answer = std::mem::MaybeUninit::<pymesh_name_answer>::uninit();
        let mut addrs = [pymesh_ip { family: 0, bytes: [0; 16] }; 4];
        let status = unsafe {
            pymesh_live_name_table_lookup(
                live,
                name.as_ptr().cast(),
                name.len(),
                answer.as_mut_ptr(),
                addrs.as_mut_ptr(),
                4,
                ptr::null_mut(),
            )
        };
        answer_of(status, unsafe { answer.assume_init() }, &addrs)
    };
    assert_eq!(look(b"a.example").0, PYMESH_NOT_FOUND);
    for (generation, ip) in [(1u64, "10.0.0.1"), (2, "10.0.0.2")] {
        let t = from_json(&format!(r#"{{"table": {{"a.example": {{"ips": ["{ip}"]}}}}}}"#), None).unwrap();
        let mut g = 0;
        let (status, _) = call(|e| unsafe { pymesh_live_name_table_store(live, t, &mut g, e) });
        assert_eq!((status, g), (PYMESH_OK, generation));
        assert_eq!(look(b"a.example").4, strings(&[ip]));
    }
    assert_eq!(unsafe { pymesh_live_name_table_generation(live) }, 2);
    // Store owns the table even when it fails.
    let t = from_json(r#"{"table": {}}"#, None).unwrap();
    let (status, _) = call(|e| unsafe { pymesh_live_name_table_store(ptr::null(), t, ptr::null_mut(), e) });
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
    let (status, _) = call(|e| unsafe { pymesh_live_name_table_store(live, ptr::null_mut(), ptr::null_mut(), e) });
    assert_eq!(status, PYMESH_ERR_INVALID_ARGUMENT);
    unsafe { pymesh_live_name_table_free(live) };
}

#[test]
fn names_of_forms_and_statuses_match_the_core_and_the_enum() {
    let forms =
        [Form::Hostname, Form::AltHost, Form::NameNamespaceSvc, Form::NameNamespace, Form::ShortName, Form::Wildcard];
    for f in forms {
        let c = pymesh_name_form::from(f) as c_int;
        assert_eq!(c, f as c_int, "C value of {f:?}");
        let s = unsafe { CStr::from_ptr(pymesh_name_form_str(c)) };
        assert_eq!(s.to_str().unwrap(), f.as_str());
    }
    assert!(pymesh_name_form_str(6).is_null());
    assert!(pymesh_name_form_str(-1).is_null());
    let statuses = [
        PYMESH_OK,
        PYMESH_NOT_FOUND,
        PYMESH_ERR_INVALID_ARGUMENT,
        PYMESH_ERR_INVALID_ENTRY,
        PYMESH_ERR_INVALID_CONFIG,
        PYMESH_ERR_PARSE,
        PYMESH_ERR_IO,
        PYMESH_ERR_BUFFER_TOO_SMALL,
        PYMESH_ERR_PANIC,
    ];
    for s in statuses {
        let name = unsafe { CStr::from_ptr(pymesh_status_str(s as c_int)) };
        assert_eq!(name.to_str().unwrap(), format!("{s:?}"));
    }
    assert!(pymesh_status_str(statuses.len() as c_int).is_null());
}
