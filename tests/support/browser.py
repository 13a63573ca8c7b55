"""A real Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, installed
from the system packages when missing, driven through Selenium; and the chat page as a user drives
it (:func:`ask_on_page`), for the tests and ``docs/screenshots.py``.

The install (about a minute on a fresh machine) starts in the background as soon as collection
finds a test that needs the browser, so it overlaps the tests before it; :func:`wait_for_chromium`
then says why there is no browser (the tests skip with that reason) or ``None``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

PACKAGES = ("chromium", "chromium-driver")
INSTALL_TIMEOUT_S = 600
_install: dict = {}  # "process" and "log" of the background install, once started


def _binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _install_command() -> list[str] | str:
    """The apt command, or why it cannot run here."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        usable = sudo and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0
        if not usable:
            return "not root and no password-less sudo"
        prefix = [sudo, "-n"]
    apt = " ".join([*prefix, "apt-get"])
    script = f"{apt} update -q && {apt} install -y -q {' '.join(PACKAGES)}"
    return ["sh", "-c", script]


def start_chromium_install() -> None:
    """Starts installing the packages in the background, once, when they are missing."""
    if _install or _binaries() is not None:
        return
    command = _install_command()
    if isinstance(command, str):
        _install["reason"] = command
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    fd, _install["log"] = tempfile.mkstemp(prefix="chromium-install-", suffix=".log")
    with os.fdopen(fd, "w") as log:  # the child keeps its own copy of the descriptor
        _install["process"] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        )


def wait_for_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or the reason there are none (for ``pytest.skip``)."""
    start_chromium_install()
    process = _install.get("process")
    if process is not None:
        try:
            process.wait(timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    found = _binaries()
    if found is not None:
        return found
    why = _install.get("reason")
    if why is None and process is not None:
        with open(_install["log"], errors="replace") as log:
            why = f"apt-get exited {process.returncode}: {log.read()[-400:]}"
    return f"Chromium and chromedriver are not installed and could not be ({why})"


def open_chromium(browser: str, driver: str, downloads: str):
    """A headless Chromium under Selenium, with the chromedriver found (Selenium Manager is not
    asked to download anything: these machines reach no browser mirror)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,900",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": downloads})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(60)
    session.set_script_timeout(60)
    return session


def wait_for(browser, condition, timeout=60):
    """Polls ``condition()`` every 50 ms until it is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: condition())


# The turns after the first N, read in one step in the page (the page may remove a turn between
# two WebDriver calls): null while an answer is still coming, else its text and meta line, or the
# refusal shown under the question.
_FINISHED_TURN = """
const turns = [...document.querySelectorAll('.turn')].slice(arguments[0]);
if (document.getElementById('send').disabled) return null;
const error = turns.map(t => t.querySelector('.error')).find(e => e);
if (error) return {error: error.textContent};
const answer = turns.find(t => t.classList.contains('assistant') && t.querySelector('.meta'));
if (!answer) return null;
return {text: answer.querySelector('.text').textContent,
        meta: answer.querySelector('.meta').textContent};
"""


def ask_on_page(browser, question: str, image_path=None):
    """Attaches an image (if any), asks, and returns the new turn when it has finished: the
    answer's text and meta line for an answer, or the refusal shown under the question."""
    from selenium.webdriver.common.by import By

    turns = len(browser.find_elements(By.CSS_SELECTOR, ".turn"))
    if image_path is not None:
        browser.find_element(By.ID, "file").send_keys(str(image_path))
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".attachment img"))
    box = browser.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    browser.find_element(By.ID, "send").click()
    return wait_for(browser, lambda: browser.execute_script(_FINISHED_TURN, turns))
