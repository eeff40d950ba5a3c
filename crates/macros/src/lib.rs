//! The `#[task]` and `#[flow]` attribute macros of Sluice.
//!
//! They turn an `async fn` into a task or a flow and expand to the plain API of
//! `sluice-core` ([`Task::run`] and [`Flow::call`]), so anything they do can be written
//! without them. Use them through the `sluice` facade crate, which re-exports them:
//!
//! ```text
//! use sluice::prelude::*;
//!
//! #[task]
//! async fn extract(cx: &TaskContext, url: &str) -> Result<Frame> {
//!     cx.read_parquet(url).await
//! }
//!
//! #[flow]
//! async fn etl(url: &str) -> Result<()> {
//!     let raw = extract(url).await?;
//!     raw.count().await?;
//!     Ok(())
//! }
//! ```
//!
//! (Runnable versions of these examples are in the `sluice` crate's documentation:
//! a proc-macro crate cannot run doctests that use its own macros.)
//!
//! [`Task::run`]: https://docs.rs/sluice-core/latest/sluice_core/struct.Task.html#method.run
//! [`Flow::call`]: https://docs.rs/sluice-core/latest/sluice_core/struct.Flow.html#method.call

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, Meta, Pat, Token, Type, parse_macro_input};

/// Settings given in the attribute: `#[task(name = "...", version = "...", persist,
/// cache = ...)]`.
struct Settings {
    name: Option<String>,
    version: Option<String>,
    /// `persist` (tee) or `persist = <expr>`.
    persist: Option<TokenStream2>,
    /// `cache = <expr>`: a `CachePolicy`.
    cache: Option<TokenStream2>,
    /// `retries = <expr>`: a `u32`.
    retries: Option<TokenStream2>,
    /// `retry_delay = <expr>`: a `RetryDelay`.
    retry_delay: Option<TokenStream2>,
    /// `timeout = <expr>`: a `Duration`.
    timeout: Option<TokenStream2>,
    /// `tags = ["a", "b"]`.
    tags: Vec<Expr>,
}

fn parse_settings(attr: TokenStream, what: &str) -> syn::Result<Settings> {
    let mut settings = Settings {
        name: None,
        version: None,
        persist: None,
        cache: None,
        retries: None,
        retry_delay: None,
        timeout: None,
        tags: Vec::new(),
    };
    let supported = if what == "task" {
        "name, version, persist, cache, retries, retry_delay, timeout, tags"
    } else {
        "name, version"
    };
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse(attr)?;
    for meta in metas {
        let key = meta
            .path()
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match (&meta, key.as_str()) {
            (Meta::Path(_), "persist") if what == "task" => {
                settings.persist = Some(quote! { ::sluice::Persist::Tee });
            }
            (Meta::NameValue(nv), "persist") if what == "task" => {
                let value = &nv.value;
                settings.persist = Some(quote! { #value });
            }
            (Meta::NameValue(nv), "cache") if what == "task" => {
                let value = &nv.value;
                settings.cache = Some(quote! { #value });
            }
            (Meta::NameValue(nv), "retries") if what == "task" => {
                let value = &nv.value;
                settings.retries = Some(quote! { #value });
            }
            (Meta::NameValue(nv), "retry_delay") if what == "task" => {
                let value = &nv.value;
                settings.retry_delay = Some(quote! { #value });
            }
            (Meta::NameValue(nv), "tags") if what == "task" => {
                let Expr::Array(array) = &nv.value else {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "expected a list of tags: tags = [\"api\"]",
                    ));
                };
                settings.tags = array.elems.iter().cloned().collect();
            }
            (Meta::NameValue(nv), "timeout") if what == "task" => {
                let value = &nv.value;
                settings.timeout = Some(quote! { #value });
            }
            (Meta::NameValue(nv), "name" | "version") => {
                let Expr::Lit(ExprLit {
                    lit: Lit::Str(value),
                    ..
                }) = &nv.value
                else {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "expected a string literal",
                    ));
                };
                if key == "name" {
                    settings.name = Some(value.value());
                } else {
                    settings.version = Some(value.value());
                }
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &meta,
                    format!("unknown #[{what}] setting `{key}`; supported: {supported}"),
                ));
            }
        }
    }
    Ok(settings)
}

/// A version of the function from its source: editing its signature or body changes
/// it; whitespace, comments and attributes (doc comments included) do not.
///
/// The text hashed is the function's tokens spelled by this macro (identifiers,
/// literals as written, punctuation, one space between tokens), not by the compiler's
/// pretty-printer, whose spelling may change between Rust versions: upgrading the
/// toolchain keeps every version, so it keeps every cache.
fn source_version(item: &ItemFn) -> String {
    let mut text = String::new();
    let tokens = quote! { #item };
    // Skip the attributes: `#` followed by a bracket group, at the top level.
    let mut trees = tokens.into_iter().peekable();
    let mut kept = TokenStream2::new();
    while let Some(tree) = trees.next() {
        if let proc_macro2::TokenTree::Punct(p) = &tree
            && p.as_char() == '#'
            && matches!(trees.peek(), Some(proc_macro2::TokenTree::Group(g)) if g.delimiter() == proc_macro2::Delimiter::Bracket)
        {
            trees.next();
            continue;
        }
        kept.extend([tree]);
    }
    canonical_tokens(kept, &mut text);
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

fn canonical_tokens(tokens: TokenStream2, out: &mut String) {
    use proc_macro2::{Delimiter, Spacing, TokenTree};
    for tree in tokens {
        match tree {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push(' ');
                canonical_tokens(group.stream(), out);
                out.push_str(close);
                out.push(' ');
            }
            TokenTree::Ident(ident) => {
                out.push_str(&ident.to_string());
                out.push(' ');
            }
            TokenTree::Punct(punct) => {
                out.push(punct.as_char());
                if punct.spacing() == Spacing::Alone {
                    out.push(' ');
                }
            }
            TokenTree::Literal(literal) => {
                out.push_str(&literal.to_string());
                out.push(' ');
            }
        }
    }
}

/// Whether an argument's type is a frame (`Frame` or `&Frame`): frames enter a cache
/// key through their lineage, not as parameters.
fn is_frame(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(reference) => reference.elem.as_ref(),
        other => other,
    };
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "Frame"))
}

fn check_async(item: &ItemFn, what: &str) -> syn::Result<()> {
    if item.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            item.sig.fn_token,
            format!("#[{what}] works on `async fn`s"),
        ));
    }
    Ok(())
}

/// Whether an argument is `cx: &TaskContext`, which the task wrapper provides.
fn is_task_context(arg: &FnArg) -> bool {
    let FnArg::Typed(typed) = arg else {
        return false;
    };
    let Type::Reference(reference) = typed.ty.as_ref() else {
        return false;
    };
    let Type::Path(path) = reference.elem.as_ref() else {
        return false;
    };
    path.path
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "TaskContext")
}

fn return_type(sig: &syn::Signature) -> TokenStream2 {
    match &sig.output {
        syn::ReturnType::Default => quote! { () },
        syn::ReturnType::Type(_, ty) => ty.to_token_stream(),
    }
}

/// Turns an `async fn` into a task: each call is a recorded task run in the current
/// flow. A first argument `cx: &TaskContext` is provided by the task and dropped from
/// the signature callers see.
///
/// Settings:
/// - `name = "..."` (defaults to the function's name);
/// - `version = "..."` (defaults to a hash of the function's tokens: editing its
///   signature or body changes it, and so invalidates its cache; whitespace, comments
///   and attributes do not, nor does a new compiler version);
/// - `persist` or `persist = Persist::Barrier`: checkpoint the output;
/// - `cache = CachePolicy::inputs().expire_after(..)`: how the cache key is made;
/// - `retries = 3` and `retry_delay = RetryDelay::exponential(Duration::from_secs(1))`:
///   retry errors that a new attempt may fix;
/// - `timeout = Duration::from_secs(600)`: fail an attempt (or, for a lazy task, one
///   streaming of its output) that takes longer;
/// - `tags = ["api"]`: for the flow's per-tag concurrency limits.
///
/// A retry calls the body again with its own copy of each owned argument, so owned
/// arguments must be `Clone` (a `Frame` is a cheap handle).
///
/// Every argument other than the context and frames is recorded as a parameter of the
/// call (as JSON where it implements `Serialize`) and is part of the cache key.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let settings = match parse_settings(attr, "task") {
        Ok(settings) => settings,
        Err(e) => return e.to_compile_error().into(),
    };
    let item = parse_macro_input!(item as ItemFn);
    match expand_task(settings, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_task(settings: Settings, item: ItemFn) -> syn::Result<TokenStream2> {
    check_async(&item, "task")?;
    let version = settings.version.unwrap_or_else(|| source_version(&item));
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = item;
    let name = settings
        .name
        .unwrap_or_else(|| sig.ident.unraw().to_string());
    let output = return_type(&sig);
    let mut options = TokenStream2::new();
    if let Some(persist) = &settings.persist {
        options.extend(quote! { .persist(#persist) });
    }
    if let Some(cache) = &settings.cache {
        options.extend(quote! { .cache(#cache) });
    }
    match (&settings.retries, &settings.retry_delay) {
        (Some(retries), Some(delay)) => options
            .extend(quote! { .with_retries(::sluice::Retry::new(#retries).with_delay(#delay)) }),
        (Some(retries), None) => {
            options.extend(quote! { .with_retries(::sluice::Retry::new(#retries)) })
        }
        (None, Some(delay)) => {
            return Err(syn::Error::new_spanned(
                delay,
                "`retry_delay` needs `retries = N`",
            ));
        }
        (None, None) => {}
    }
    if let Some(timeout) = &settings.timeout {
        options.extend(quote! { .with_timeout(#timeout) });
    }
    for tag in &settings.tags {
        options.extend(quote! { .with_tag(#tag) });
    }
    let mut bind_cx = TokenStream2::new();
    if sig.inputs.first().is_some_and(is_task_context) {
        let first = sig.inputs.iter().next().cloned();
        sig.inputs = sig.inputs.into_iter().skip(1).collect();
        if let Some(FnArg::Typed(typed)) = first {
            let pat = &typed.pat;
            bind_cx = quote! { let #pat = &__sluice_cx; };
        }
    } else {
        bind_cx = quote! { let _ = &__sluice_cx; };
    }
    // The body is called again on a retry: each call gets its own copy of the owned
    // arguments (references are copied as they are). The `mut` of an argument moves to
    // that copy.
    let mut clone_args = TokenStream2::new();
    for arg in sig.inputs.iter_mut() {
        if let FnArg::Typed(typed) = arg
            && !matches!(typed.ty.as_ref(), Type::Reference(_))
            && let Pat::Ident(ident) = typed.pat.as_mut()
        {
            let inner = ident.clone();
            ident.mutability = None;
            let name = &ident.ident;
            clone_args.extend(quote! { let #inner = ::core::clone::Clone::clone(&#name); });
        }
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(typed) = arg
            && !is_frame(&typed.ty)
            && let Pat::Ident(ident) = typed.pat.as_ref()
        {
            let ident = &ident.ident;
            let key = ident.to_string();
            options.extend(quote! {
                .with_parameter(#key, {
                    #[allow(unused_imports)]
                    use ::sluice::__private::{ViaSerialize as _, ViaTypeName as _};
                    (&::sluice::__private::ParamProbe(&#ident)).param_value()
                })
            });
        }
    }
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            ::sluice::Task::new(#name)
                .with_version(#version)
                #options
                .run(move |__sluice_cx: ::sluice::TaskContext| {
                    #clone_args
                    async move {
                        #bind_cx
                        // The annotation lets `?` in the body infer its error type.
                        #[allow(clippy::let_and_return)]
                        let __sluice_out: #output = #block;
                        __sluice_out
                    }
                })
                .await
        }
    })
}

/// Turns an `async fn` into a flow. Calling it returns a [`FlowCall`]: `.await` it for
/// the body's result, or chain `.with_mode(..)` / `.with_session(..)` and `.run()` for
/// the result and the flow-run record. Arguments are recorded as the run's parameters
/// (as JSON where they implement `Serialize`, by type name otherwise).
///
/// Settings: `name = "..."` and `version = "..."`, as for [`task`](macro@task).
///
/// [`FlowCall`]: https://docs.rs/sluice-core/latest/sluice_core/struct.FlowCall.html
#[proc_macro_attribute]
pub fn flow(attr: TokenStream, item: TokenStream) -> TokenStream {
    let settings = match parse_settings(attr, "flow") {
        Ok(settings) => settings,
        Err(e) => return e.to_compile_error().into(),
    };
    let item = parse_macro_input!(item as ItemFn);
    match expand_flow(settings, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_flow(settings: Settings, item: ItemFn) -> syn::Result<TokenStream2> {
    check_async(&item, "flow")?;
    let version = settings.version.unwrap_or_else(|| source_version(&item));
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = item;
    let name = settings
        .name
        .unwrap_or_else(|| sig.ident.unraw().to_string());
    let output = return_type(&sig);
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    "#[flow] works on free functions, not methods",
                ));
            }
            FnArg::Typed(typed) => {
                if let Pat::Ident(ident) = typed.pat.as_ref() {
                    let ident = &ident.ident;
                    let key = ident.to_string();
                    params.push(quote! {
                        __sluice_params.insert(
                            #key.to_string(),
                            (&::sluice::__private::ParamProbe(&#ident)).param_value(),
                        );
                    });
                }
            }
        }
    }
    sig.asyncness = None;
    sig.output = syn::parse2(quote! {
        -> ::sluice::FlowCall<impl ::core::future::Future<Output = #output>>
    })?;
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let __sluice_parameters = {
                #[allow(unused_imports)]
                use ::sluice::__private::{ViaSerialize as _, ViaTypeName as _};
                #[allow(unused_mut)]
                let mut __sluice_params = ::sluice::__private::serde_json::Map::new();
                #(#params)*
                ::sluice::__private::serde_json::Value::Object(__sluice_params)
            };
            ::sluice::Flow::new(#name)
                .with_version(#version)
                .call(__sluice_parameters, async move {
                    #[allow(clippy::let_and_return)]
                    let __sluice_out: #output = #block;
                    __sluice_out
                })
        }
    })
}
