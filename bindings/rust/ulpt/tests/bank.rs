//! The prompt bank through `Bank`: mixed batches equal each prompt's forward, half
//! precision, stale ids, other models refused, loading a directory, threads.

mod common;

use common::TempDir;
use ulpt::{Bank, BankId, Dtype, ErrorKind, Prompt, PromptOptions, Request};

const D: u32 = 16;

fn prompt(n: u32, seed: u64, model: &str) -> Prompt {
    let mut p = Prompt::new(&PromptOptions { projection_seed: seed, init_seed: seed + 1, ..PromptOptions::new(n, D) })
        .unwrap();
    for (i, x) in p.params_mut().iter_mut().enumerate() {
        *x += 0.01 * (i % 7) as f32; // s != 1, b != 0
    }
    p.set_meta("model", model).unwrap();
    p
}

#[test]
fn a_mixed_batch_equals_each_prompts_forward() {
    let bank = Bank::new("m", D).unwrap();
    assert_eq!((bank.model(), bank.dim(), bank.len(), bank.is_empty()), ("m", D, 0, true));
    let ps = [prompt(3, 1, "m"), prompt(5, 2, "m"), prompt(2, 1, "m")];
    let ids: Vec<BankId> = ps.iter().map(|p| bank.add(p, None).unwrap()).collect();
    assert_eq!(bank.len(), 3);
    let order = [2usize, 0, 1, 0];
    let ld = D as usize + 3;
    let mut bufs: Vec<Vec<f32>> = order.iter().map(|&k| vec![-1.0; ps[k].n_tokens() as usize * ld]).collect();
    let mut reqs: Vec<Request<f32>> =
        order.iter().zip(bufs.iter_mut()).map(|(&k, b)| Request { id: ids[k], dst: b, ld }).collect();
    bank.materialise(&mut reqs).unwrap();
    for (&k, b) in order.iter().zip(&bufs) {
        let e = ps[k].embeddings().unwrap();
        for i in 0..ps[k].n_tokens() as usize {
            assert_eq!(&b[i * ld..i * ld + D as usize], &e[i * D as usize..(i + 1) * D as usize]);
            assert!(b[i * ld + D as usize..(i + 1) * ld].iter().all(|&x| x == -1.0));
        }
        assert_eq!(bank.n_tokens(ids[k]).unwrap(), ps[k].n_tokens());
    }
}

/// f16 bits by round to nearest even, for normal values (the only ones here).
fn f16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    let ax = u & 0x7fff_ffff;
    let h = ((ax + 0xfff + ((ax >> 13) & 1)) >> 13) - ((127 - 15) << 10);
    sign | h as u16
}

#[test]
fn half_output_is_the_forward_rounded() {
    let bank = Bank::new("m", D).unwrap();
    let p = prompt(4, 3, "m");
    let id = bank.add(&p, Some("half")).unwrap();
    let e = p.embeddings().unwrap();
    let mut h = vec![0u16; e.len()];
    bank.materialise_half(&mut [Request { id, dst: &mut h, ld: D as usize }], Dtype::F16).unwrap();
    for (x, &b) in e.iter().zip(&h) {
        assert!(x.abs() > 1e-4, "test values stay normal in f16");
        assert_eq!(b, f16_bits(*x));
    }
    bank.materialise_half(&mut [Request { id, dst: &mut h, ld: D as usize }], Dtype::Bf16).unwrap();
    for (x, &b) in e.iter().zip(&h) {
        let u = x.to_bits();
        assert_eq!(b, ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16);
    }
    let err = bank.materialise_half(&mut [Request { id, dst: &mut h, ld: D as usize }], Dtype::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[test]
fn removed_ids_are_stale_and_bad_requests_change_nothing() {
    let bank = Bank::new("m", D).unwrap();
    let p = prompt(3, 1, "m");
    let keep = bank.add(&p, Some("keep")).unwrap();
    let gone = bank.add(&p, Some("gone")).unwrap();
    bank.remove(gone).unwrap();
    assert_eq!(bank.remove(gone).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(bank.find("gone").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(bank.find("keep").unwrap(), keep);
    let again = bank.add(&p, Some("gone")).unwrap();
    assert_ne!(again, gone);
    let mut a = vec![7.0f32; 3 * D as usize];
    let mut b = vec![7.0f32; 3 * D as usize];
    let err = bank
        .materialise(&mut [Request { id: keep, dst: &mut a, ld: D as usize }, Request { id: gone, dst: &mut b, ld: D as usize }])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(a.iter().all(|&x| x == 7.0));
    let mut short = vec![0.0f32; 3 * D as usize - 1];
    let err = bank.materialise(&mut [Request { id: keep, dst: &mut short, ld: D as usize }]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("request 0"), "{}", err);
}

#[test]
fn other_models_are_refused_and_directories_load_all_or_nothing() {
    let bank = Bank::new("m", D).unwrap();
    let err = bank.add(&prompt(2, 1, "other"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert!(err.message().contains("\"other\"") && err.message().contains("\"m\""), "{}", err);

    let dir = TempDir::new("bank");
    prompt(2, 1, "m").save(dir.path("a.ulpt")).unwrap();
    prompt(3, 1, "m").save(dir.path("b.ulpt")).unwrap();
    assert_eq!(bank.load_dir(dir.dir()).unwrap(), 2);
    assert_eq!(bank.n_tokens(bank.find("b").unwrap()).unwrap(), 3);

    let bad = TempDir::new("bank-bad");
    prompt(2, 1, "m").save(bad.path("c.ulpt")).unwrap();
    prompt(2, 1, "llama").save(bad.path("d.ulpt")).unwrap();
    let err = bank.load_dir(bad.dir()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert!(err.message().contains("d.ulpt was tuned for model \"llama\""), "{}", err);
    assert_eq!(bank.len(), 2);
    assert_eq!(bank.find("c").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn threads_materialise_while_one_adds_and_removes() {
    let bank = Bank::new("m", D).unwrap();
    let p = prompt(4, 5, "m");
    let id = bank.add(&p, None).unwrap();
    let want = p.embeddings().unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut e = vec![0.0f32; want.len()];
                for _ in 0..200 {
                    bank.materialise(&mut [Request { id, dst: &mut e, ld: D as usize }]).unwrap();
                    assert_eq!(e, want);
                }
            });
        }
        s.spawn(|| {
            for _ in 0..200 {
                let extra = bank.add(&p, None).unwrap();
                bank.remove(extra).unwrap();
            }
        });
    });
    assert_eq!(bank.len(), 1);
}
