//! The edge's own sign-in pages: small HTML, no external assets, one inline style sheet,
//! branded with the application's display name and usable on a phone. Everything inserted
//! is HTML-escaped.

use std::fmt::Write;

/// A message shown above a form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Nothing to say.
    None,
    /// The form was stale or forged; start again.
    FormExpired,
    /// The code was wrong; this many tries are left.
    WrongCode(u32),
    /// The code expired.
    CodeExpired,
    /// Too many wrong codes.
    TooManyAttempts,
    /// The code was already used.
    CodeUsed,
    /// The e-mail address is not well formed.
    BadEmail,
    /// Signed out.
    SignedOut,
}

impl Notice {
    fn text(self) -> Option<String> {
        Some(match self {
            Self::None => return None,
            Self::FormExpired => "The form expired. Please try again.".to_owned(),
            Self::WrongCode(left) => format!(
                "That code is not right. {left} {} left.",
                if left == 1 { "try" } else { "tries" }
            ),
            Self::CodeExpired => "That code has expired. Ask for a new one.".to_owned(),
            Self::TooManyAttempts => "Too many wrong codes. Ask for a new one.".to_owned(),
            Self::CodeUsed => "That code was already used. Ask for a new one.".to_owned(),
            Self::BadEmail => "Please enter a valid e-mail address.".to_owned(),
            Self::SignedOut => "You are signed out.".to_owned(),
        })
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "*{box-sizing:border-box}body{font-family:system-ui,-apple-system,sans-serif;\
background:#f4f5f7;color:#1d2330;margin:0;display:flex;min-height:100vh;align-items:center;\
justify-content:center}main{background:#fff;border-radius:12px;box-shadow:0 2px 12px #0002;\
padding:2rem 1.5rem;width:100%;max-width:24rem;margin:1rem}h1{font-size:1.4rem;margin:0 0 .3rem}\
p{line-height:1.4}label{display:block;font-weight:600;margin:1rem 0 .4rem}input{width:100%;\
font-size:1.1rem;padding:.7rem;border:1px solid #b8bfcc;border-radius:8px}\
button{width:100%;margin-top:1.2rem;font-size:1.1rem;padding:.75rem;border:0;border-radius:8px;\
background:#2f5bd3;color:#fff;cursor:pointer}.notice{background:#fff4d6;border-radius:8px;\
padding:.6rem .8rem}.muted{color:#5c6578;font-size:.9rem}a{color:#2f5bd3}";

fn page(app: &str, title: &str, notice: Notice, body: &str) -> String {
    let app = escape(app);
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{title} · {app}</title><style>{STYLE}</style></head>\
         <body><main><h1>{app}</h1>"
    );
    if let Some(text) = notice.text() {
        let _ = write!(
            html,
            "<p class=\"notice\" role=\"alert\">{}</p>",
            escape(&text)
        );
    }
    html.push_str(body);
    html.push_str("</main></body></html>\n");
    html
}

/// What every sign-in form carries.
#[derive(Clone, Copy, Debug)]
pub struct Form<'a> {
    /// The application's display name.
    pub app: &'a str,
    /// Where the form posts.
    pub action: &'a str,
    /// The CSRF token.
    pub csrf: &'a str,
    /// The local path to return to after signing in.
    pub return_to: &'a str,
}

/// The e-mail form.
pub fn email_form(form: &Form<'_>, notice: Notice) -> String {
    let Form {
        app,
        action,
        csrf,
        return_to,
    } = *form;
    let body = format!(
        "<p>Sign in with your e-mail address. We will send you a one-time code.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
         <label for=\"email\">E-mail</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required \
         autofocus inputmode=\"email\" maxlength=\"320\">\
         <button type=\"submit\">Send me a code</button></form>",
        action = escape(action),
        csrf = escape(csrf),
        rd = escape(return_to),
    );
    page(app, "Sign in", notice, &body)
}

/// The code form, shown whether or not the address may sign in; `restart` links back to
/// the e-mail form.
pub fn code_form(
    form: &Form<'_>,
    restart: &str,
    email: &str,
    digits: u32,
    notice: Notice,
) -> String {
    let Form {
        app,
        action,
        csrf,
        return_to,
    } = *form;
    let body = format!(
        "<p>If <strong>{email}</strong> may sign in, a {digits}-digit code has been sent to it. \
         Enter it below.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
         <label for=\"code\">Code</label>\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" pattern=\"[0-9]{{{digits}}}\" maxlength=\"{digits}\" \
         required autofocus>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\"><a href=\"{restart}\">Use another address or get a new code</a></p>",
        email = escape(email),
        action = escape(action),
        csrf = escape(csrf),
        rd = escape(return_to),
        restart = escape(restart),
    );
    page(app, "Enter your code", notice, &body)
}

/// The text of the e-mail that carries a code.
pub fn code_mail(app: &str, code: &str, minutes: u64) -> (String, String) {
    let subject = format!("Your sign-in code for {app}");
    let body = format!(
        "Your code to sign in to {app} is:\n\n    {code}\n\n\
         It expires in {minutes} minute{s} and works once.\n\
         If you did not ask for it, you can ignore this message.\n",
        s = if minutes == 1 { "" } else { "s" }
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_text_is_escaped() {
        let form = Form {
            app: "<Media & Co>",
            action: "/.portcullis/code",
            csrf: "t\"k",
            return_to: "/web?a=1&b=<2>",
        };
        let html = code_form(
            &form,
            "/.portcullis/login",
            "\"><script>alert(1)</script>@x.org",
            6,
            Notice::WrongCode(2),
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;Media &amp; Co&gt;"));
        assert!(html.contains("value=\"t&quot;k\""));
        assert!(html.contains("/web?a=1&amp;b=&lt;2&gt;"));
        assert!(html.contains("2 tries left"));
        assert!(html.contains("pattern=\"[0-9]{6}\""));
    }

    #[test]
    fn pages_need_no_external_asset() {
        let form = Form {
            app: "Media",
            action: "/.portcullis/login",
            csrf: "t",
            return_to: "/",
        };
        let html = email_form(&form, Notice::None);
        for needle in ["http://", "https://", "<script", "<link", "<img"] {
            assert!(!html.contains(needle), "{needle} in the page");
        }
        assert!(html.contains("width=device-width"));
    }

    #[test]
    fn the_mail_names_the_app_the_code_and_its_lifetime() {
        let (subject, body) = code_mail("Media", "123456", 10);
        assert_eq!(subject, "Your sign-in code for Media");
        assert!(body.contains("123456") && body.contains("10 minutes"));
    }
}
