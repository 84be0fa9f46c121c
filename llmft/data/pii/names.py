"""Compact first-name and surname lists for the person-name detector.

Hand-written, not exhaustive: common given names and surnames across English, German, French,
Spanish, Italian, Dutch, Nordic, Slavic, Arabic, Indian and East Asian usage. A name is only
flagged with capitalisation and either a second name part or a cue ("my name is", "Dear", "Mr.").
"""

from __future__ import annotations

FIRST_NAMES = frozenset("""
aaron abdul abigail adam adrian ahmed aisha alan albert alejandro alex alexander alexandra alfred ali alice alicia
alina amanda amelia amir amy ana andrea andreas andrew angela anna anne annette anthony antoine antonio arjun
arthur astrid aurélie axel barbara beatriz ben benjamin bernard bernd bettina bianca bob brandon brian bruno
camille carla carlos carmen caroline catherine cecilia charles charlotte chen chloe chris christian christina
christine christoph christopher claire claudia daniel daniela david deborah dennis diana diego dieter dimitri
dmitri dominik donald dorothy edward elena elif elisabeth elizabeth ella emily emma eric erik ethan eva fatima
felix fernando florian francesca francesco françois frank franz frederik gabriel gabriele george georg gerhard
giovanni giulia giuseppe grace gregory greta günter hannah hans harald harry heinrich helen helena helmut henrik
henry hiroshi hugo ian ibrahim igor ines ingrid isabel isabella ivan jack jacob james jan jana jane janet jason
javier jean jennifer jens jessica joachim joan joanna joe johan johann johannes john jonas jonathan jordan jorge
josé josef joseph joshua juan julia julian julie jürgen justin karen karin karl kate katharina katherine kathryn
kenji kevin klaus kristina lars laura lea leon leonardo liam lina linda lisa louis louise luca lucas lucia luis
lukas lena maja manuel marco margaret maria marie marina mario mark markus martin martina mary mateo matteo
matthew matthias max maximilian mehmet melanie mei mia michael michelle miguel mikhail mohamed mohammed monika
nadia natalia nathan nicolas nicole niklas nina noah nora olga oliver olivia omar oscar pablo patricia
patrick paul paula pedro peter petra philipp pierre pietro priya rachel rahul rajesh ralf raphael rebecca richard
rita robert roberto rosa ryan sabine sam samantha samuel sandra sara sarah sebastian sergei simon simone sofia
sophie stefan stefanie stephanie steven susan susanne sven svetlana takeshi tanja thomas tim timothy tobias tom
ursula valentina vanessa victor viktor vincent walter wei william wolfgang xavier yuki yusuf zoe
""".split())

SURNAMES = frozenset("""
adams ahmed alexander ali allen anderson bailey baker becker bell bernard bianchi brown bruno campbell carter
chen clark collins cook costa cruz davies davis dubois dupont durand edwards evans fernandez fischer fontaine
garcia gomez gonzalez green hall harris hernandez hill hoffmann hughes hussain ivanov jackson james jansen
jensen johansson johnson jones kaur khan kim king klein koch kowalski kumar lambert lee leroy lewis li lopez
martin martinez meyer miller mitchell moore morales moreau morgan murphy müller nakamura nguyen nielsen novak
o'brien ortiz parker patel perez petit peters petrov phillips popescu ramirez reed richard richter roberts
robinson rodriguez romano rossi russo sanchez santos schmidt schmitz schneider schulz schwarz scott shah silva
singh smith sousa suzuki tanaka taylor thomas thompson torres turner wagner walker wang weber white williams
wilson wright wu yamamoto young zhang zimmermann doe
""".split())

# capitalised words that follow a first name without being a surname (titles, places, weekdays, ...)
NOT_SURNAMES = frozenset("""
and or the of in on at to for from with by is was are a an i if but so as it this that street avenue road lane
drive court way place square bank company corporation inc ltd gmbh ag group team support service services period
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december university college school hospital hotel airport station park river lake
mountain city county state province north south east west new old great grand saint st mr mrs ms dr
""".split())

# words after a cue ("Dear ...", "I am ...") that are not names
NOT_NAMES = frozenset("""
sir madam madame customer customers team all colleague colleagues friend friends everyone user users client
clients manager support sales valued member members reader readers here there not a an the very so just
happy sorry glad fine ok okay sure ready done back home interested looking writing calling available unable
able going trying new sorry confused
he she it they we you i me him her us them his hers its their theirs my mine our ours your yours who what when
where why how this that these those then also after before if but and or
""".split())
