//! The process-wide settings, `set_allocator` (every allocation goes through the host's
//! functions) and `set_num_threads`.  Their own test binary, with one test, so that no
//! other libulpt call runs while they do, as their safety contracts require.

use std::os::raw::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use ulpt::{sys, Prompt, PromptOptions};

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static FREES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn counting_alloc(_user: *mut c_void, size: usize) -> *mut c_void {
    ALLOCS.fetch_add(1, Ordering::SeqCst);
    libc::malloc(size)
}

unsafe extern "C" fn counting_realloc(_user: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
    }
    libc::realloc(p, size)
}

unsafe extern "C" fn counting_free(_user: *mut c_void, p: *mut c_void) {
    if !p.is_null() {
        FREES.fetch_add(1, Ordering::SeqCst);
    }
    libc::free(p)
}

#[test]
fn process_wide_settings() {
    allocations_go_through_the_hosts_allocator_and_are_all_freed();
    // SAFETY: nothing else runs in this process meanwhile.
    let err = unsafe { ulpt::set_num_threads(0) }.unwrap_err();
    assert_eq!(err.kind(), ulpt::ErrorKind::Invalid);
    assert!(err.message().starts_with("ulpt_set_num_threads"), "{}", err);
    unsafe { ulpt::set_num_threads(1) }.unwrap();
    let p = Prompt::new(&PromptOptions::new(3, 10)).unwrap();
    assert_eq!(p.embeddings().unwrap().len(), 30);
}

fn allocations_go_through_the_hosts_allocator_and_are_all_freed() {
    let a = sys::ulpt_allocator {
        alloc: Some(counting_alloc),
        realloc: Some(counting_realloc),
        free: Some(counting_free),
        user: std::ptr::null_mut(),
    };
    // SAFETY: this binary has a single test, so nothing else calls libulpt meanwhile;
    // the functions are malloc, realloc and free.
    unsafe { ulpt::set_allocator(Some(&a)) }.unwrap();
    {
        let mut p = Prompt::new(&PromptOptions::new(3, 10)).unwrap();
        p.set_meta("model", "m").unwrap();
        let bytes = p.to_bytes().unwrap();
        let q = Prompt::from_bytes(&bytes).unwrap();
        assert_eq!(q.meta("model").as_deref(), Some("m"));
        assert!(ALLOCS.load(Ordering::SeqCst) >= 3);
    }
    // Switching back while nothing is alive; every allocation was freed.
    unsafe { ulpt::set_allocator(None) }.unwrap();
    assert_eq!(ALLOCS.load(Ordering::SeqCst), FREES.load(Ordering::SeqCst));

    // An allocator without free is refused, and the default stays in place.
    let bad = sys::ulpt_allocator { free: None, ..a };
    let err = unsafe { ulpt::set_allocator(Some(&bad)) }.unwrap_err();
    assert_eq!(err.kind(), ulpt::ErrorKind::Invalid);
    let before = ALLOCS.load(Ordering::SeqCst);
    drop(Prompt::new(&PromptOptions::new(2, 4)).unwrap());
    assert_eq!(ALLOCS.load(Ordering::SeqCst), before);
}
