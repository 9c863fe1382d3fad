"""Word lists and query templates of the built-in voice-search corpus.

The domain follows the voice-search data of the USM-Lite paper: short spoken queries
and commands. Every slot word is lower case letters, apostrophes and spaces only, so the
text is already in the corpus' normal form.
"""
from __future__ import annotations

_ONES = "zero one two three four five six seven eight nine".split()
_TEENS = ("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
          "nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_number(n: int) -> str:
    """English words for 0 <= n < 10000, without 'and' (as voice queries say them)."""
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    thousands, rest = divmod(n, 1000)
    return spell_number(thousands) + " thousand" + ("" if rest == 0 else " " + spell_number(rest))


FIRST_NAMES = """
james mary robert patricia john jennifer michael linda david elizabeth william barbara
richard susan joseph jessica thomas sarah charles karen christopher lisa daniel nancy
matthew betty anthony margaret mark sandra donald ashley steven kimberly paul emily
andrew donna joshua michelle kenneth carol kevin amanda brian dorothy george melissa
timothy deborah ronald stephanie edward rebecca jason sharon jeffrey laura ryan cynthia
jacob kathleen gary amy nicholas angela eric shirley jonathan anna stephen brenda larry
pamela justin emma scott nicole brandon helen benjamin samantha samuel katherine gregory
christine alexander debra frank rachel patrick carolyn raymond janet jack catherine
dennis maria jerry heather tyler diane aaron ruth jose julie adam olivia nathan joyce
henry virginia douglas victoria zachary kelly peter lauren kyle christina ethan joan
walter evelyn noah judith jeremy megan christian andrea keith cheryl roger hannah terry
jacqueline gerald martha harold gloria sean teresa austin ann carl sara arthur madison
lawrence frances dylan kathryn jesse janice jordan jean bryan abigail billy alice joe
julia bruce judy gabriel sophia logan grace albert denise willie amber alan doris juan
marilyn wayne danielle elijah beverly randy isabella roy theresa vincent diana ralph
natalie eugene brittany russell charlotte bobby marie mason kayla philip alexis louis
lori priya arjun mei wei hiroshi yuki omar fatima ahmed aisha carlos sofia diego lucia
""".split()

SURNAMES = """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez
lopez gonzalez wilson anderson taylor moore jackson martin lee perez thompson white
harris sanchez clark ramirez lewis robinson walker young allen king wright torres
nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter
roberts gomez phillips evans turner diaz parker cruz edwards collins reyes stewart
morris morales murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed
kelly howard ramos kim cox ward richardson watson brooks chavez wood bennett gray
mendoza ruiz hughes price alvarez castillo sanders patel myers long ross foster
jimenez powell jenkins perry russell sullivan bell coleman butler henderson barnes
fisher vasquez simmons graham marshall owens harrison gibson wallace
""".split()

CITIES = """
london paris berlin madrid rome tokyo sydney toronto chicago boston seattle denver
houston dallas austin phoenix atlanta miami orlando portland detroit cleveland memphis
nashville louisville baltimore philadelphia pittsburgh brooklyn manhattan oakland
sacramento fresno tucson albuquerque omaha wichita tulsa minneapolis milwaukee
indianapolis columbus cincinnati charlotte raleigh richmond norfolk buffalo rochester
syracuse albany hartford providence newark jersey honolulu anchorage spokane boise
reno vegas salt lake dublin glasgow edinburgh manchester liverpool leeds bristol
cardiff belfast oxford cambridge york brighton birmingham sheffield nottingham
leicester coventry amsterdam brussels vienna prague warsaw budapest lisbon barcelona
seville valencia milan naples venice florence athens istanbul cairo nairobi lagos
johannesburg mumbai delhi bangalore chennai kolkata karachi dubai singapore bangkok
jakarta manila seoul beijing shanghai hong kong taipei osaka kyoto melbourne brisbane
perth adelaide auckland wellington vancouver calgary montreal ottawa quebec halifax
winnipeg mexico lima bogota santiago havana kingston stockholm oslo helsinki
copenhagen zurich geneva munich hamburg frankfurt cologne lyon marseille nice
""".split()

COUNTRIES = """
france germany spain italy japan china india brazil canada australia england
scotland ireland wales mexico russia egypt kenya nigeria peru chile argentina
colombia greece turkey norway sweden finland denmark poland portugal austria
switzerland belgium netherlands thailand vietnam indonesia malaysia korea iceland
""".split()

PLACES = """
airport station library museum hospital pharmacy bakery supermarket stadium
park beach harbor cinema theater gym school university office hotel restaurant
cafe bank post garage mall market zoo aquarium church cathedral castle bridge
downtown uptown suburbs center square avenue boulevard highway street road lane
""".split()

ARTISTS = """
adele beyonce drake rihanna madonna shakira eminem coldplay metallica nirvana
queen abba oasis blur radiohead muse prince bjork sade enya moby usher akon
nelly pink lorde sia halsey khalid lizzo dua lipa ed sheeran taylor swift bruno
mars elton billie eilish ariana grande justin bieber katy perry lady gaga
kanye jay michael jackson whitney houston stevie wonder bob marley dylan frank
sinatra louis armstrong ella fitzgerald miles davis johnny cash dolly parton
elvis presley the beatles rolling stones pink floyd led zeppelin fleetwood mac
bon jovi aerosmith guns roses daft punk gorillaz arctic monkeys killers strokes
""".split()

SONG_WORDS = """
love heart night dance dream fire rain summer winter river road home forever
yesterday tomorrow tonight morning sunshine moon stars sky ocean wild young free
crazy lonely happy sweet golden silver blue red black white purple thunder storm
midnight paradise heaven angel diamond shadow light dark bright broken beautiful
perfect hello goodbye always never someone nobody everybody together alone baby
girl boy woman man world life time way song music rhythm melody chorus echo
""".split()

PRODUCTS = """
phone laptop tablet headphones speaker charger cable keyboard mouse monitor printer
camera television remote battery watch backpack jacket shoes sneakers boots socks
shirt sweater jeans dress umbrella sunglasses wallet bottle blender toaster kettle
microwave vacuum lamp pillow blanket towel mattress sofa chair desk shelf mirror
candle soap shampoo toothpaste toothbrush razor lotion sunscreen vitamins coffee
tea milk bread eggs butter cheese yogurt apples bananas oranges grapes lemons
tomatoes potatoes onions carrots lettuce spinach broccoli rice pasta flour sugar
salt pepper chicken beef pork salmon tuna shrimp cereal oatmeal honey jam peanut
cookies chips crackers juice soda water wine beer pizza burger sandwich salad soup
tacos noodles sushi dumplings pancakes waffles donuts muffins bagels croissants
""".split()

ADJECTIVES = """
cheap expensive nearest best closest open quiet busy cheapest fastest large small
new used red blue green black white wireless portable organic fresh frozen spicy
vegetarian italian chinese mexican indian thai japanese french greek korean
""".split()

APPS = """
calendar alarm timer stopwatch calculator weather maps messages email camera
photos music podcasts radio news notes reminders contacts settings flashlight
bluetooth wifi
""".split()

TOPICS = """
history science physics chemistry biology astronomy geography mathematics
philosophy economics politics football basketball baseball tennis golf cricket
rugby hockey soccer chess poetry painting photography gardening cooking baking
""".split()

ANIMALS = """
dog cat horse cow sheep goat pig rabbit mouse lion tiger bear wolf fox deer elephant
giraffe zebra monkey gorilla kangaroo koala panda penguin dolphin whale shark octopus
eagle owl parrot swan duck goose frog turtle snake lizard spider bee butterfly
""".split()

DAYS = "monday tuesday wednesday thursday friday saturday sunday today tomorrow".split()
MONTHS = ("january february march april may june july august september october "
          "november december").split()
TIMES_OF_DAY = "morning afternoon evening night noon midnight".split()
UNITS = "miles kilometers degrees pounds ounces cups liters gallons inches feet".split()


def small_number(rng) -> str:
    return spell_number(rng.randint(2, 99))


def any_number(rng) -> str:
    return spell_number(rng.choice([rng.randint(1, 99), rng.randint(100, 999), rng.randint(1000, 9999)]))


def _pick(words):
    return lambda rng: rng.choice(words)


def _person(rng):
    return rng.choice(FIRST_NAMES) + ("" if rng.random() < 0.4 else " " + rng.choice(SURNAMES))


def _song(rng):
    return " ".join(rng.sample(SONG_WORDS, rng.randint(1, 3)))


def _artist(rng):
    # artists are one to three words; taking a window keeps real multi-word names together
    start = rng.randrange(len(ARTISTS))
    return " ".join(ARTISTS[start:start + rng.randint(1, 2)])


def _clock(rng):
    return spell_number(rng.randint(1, 12)) + rng.choice(["", " thirty", " fifteen", " forty five"]) + \
        rng.choice([" a m", " p m", ""])


SLOTS = {
    "person": _person,
    "first": _pick(FIRST_NAMES),
    "city": _pick(CITIES),
    "country": _pick(COUNTRIES),
    "place": _pick(PLACES),
    "artist": _artist,
    "song": _song,
    "product": _pick(PRODUCTS),
    "adj": _pick(ADJECTIVES),
    "app": _pick(APPS),
    "topic": _pick(TOPICS),
    "animal": _pick(ANIMALS),
    "day": _pick(DAYS),
    "month": _pick(MONTHS),
    "tod": _pick(TIMES_OF_DAY),
    "unit": _pick(UNITS),
    "n": small_number,
    "num": any_number,
    "clock": _clock,
}

TEMPLATES = [
    "what's the weather in {city}",
    "what's the weather like in {city} {day}",
    "will it rain in {city} {day}",
    "how hot is it in {city}",
    "play {song} by {artist}",
    "play some {artist}",
    "play the album {song}",
    "play {topic} podcasts",
    "call {person}",
    "call {person} on speaker",
    "text {first} i'm running {n} minutes late",
    "send a message to {person}",
    "navigate to {city}",
    "navigate to the nearest {place}",
    "directions to the {place} in {city}",
    "how far is {city} from {city}",
    "how long does it take to drive to {city}",
    "set a timer for {n} minutes",
    "set an alarm for {clock}",
    "wake me up at {clock} on {day}",
    "remind me to buy {product} {day}",
    "remind me to call {first} at {clock}",
    "add {product} to my shopping list",
    "buy {adj} {product}",
    "find {adj} {product} near me",
    "how much does a {product} cost",
    "order {product} and {product}",
    "where can i buy {product} in {city}",
    "who is {person}",
    "who sings {song}",
    "what is the capital of {country}",
    "how many {unit} in {num} {unit}",
    "what is {num} plus {num}",
    "what is {n} times {n}",
    "convert {num} {unit} to {unit}",
    "how old is {artist}",
    "when was {person} born",
    "what time is it in {city}",
    "what's on my calendar for {day}",
    "schedule a meeting with {person} on {day} at {clock}",
    "open {app}",
    "turn on {app}",
    "turn off the lights in the {place}",
    "show me photos from {city}",
    "show me pictures of a {animal}",
    "what sound does a {animal} make",
    "how big is a {animal}",
    "tell me about the {topic} of {country}",
    "search for {topic} news",
    "book a table for {n} at a {adj} restaurant",
    "find a {adj} restaurant in {city}",
    "is the {place} open on {day}",
    "what movies are playing in {city} {day}",
    "flights from {city} to {city} in {month}",
    "hotels in {city} for {n} nights",
    "translate {song} into {country}",
    "read my messages from {first}",
    "what's the score of the {topic} game",
    "how do i make {product}",
    "recipe for {adj} {product}",
]

LEXICON_GROUPS = {
    "first_names": FIRST_NAMES, "surnames": SURNAMES, "cities": CITIES, "countries": COUNTRIES,
    "places": PLACES, "artists": ARTISTS, "song_words": SONG_WORDS, "products": PRODUCTS,
    "adjectives": ADJECTIVES, "apps": APPS, "topics": TOPICS, "animals": ANIMALS,
    "days": DAYS, "months": MONTHS, "times_of_day": TIMES_OF_DAY, "units": UNITS,
}


def lexicon() -> set[str]:
    """Every distinct word the corpus can produce (slot words, numbers, template words)."""
    words: set[str] = set()
    for group in LEXICON_GROUPS.values():
        words.update(group)
    for n in range(0, 10000, 1):
        words.update(spell_number(n).split())
    for t in TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    words.update(["a", "m", "p", "thirty", "fifteen", "forty", "five"])
    return words
